"""JSON-in/JSON-out shim around genz-llm 0.0.16 (GenZ), run in its own venv. Same protocol as
llm_analysis_shim.py. GenZ models inference only (prefill, decode): training cases are reported as
unsupported. Peaks and bandwidths come from the caller; GenZ's efficiencies stay at its default (1.0)."""

import warnings

from shim_protocol import serve  # the shims' folder is on sys.path when run as scripts


def run(case):
    from GenZ import ModelConfig, decode_moddeling, prefill_moddeling

    m, g = case["model"], case["gpu"]
    mc = ModelConfig(model=m["name"], vocab_size=m["vocab"], max_model_len=m["max_context"], hidden_size=m["hidden"],
                     intermediate_size=m["intermediate"], num_ffi=2, num_decoder_layers=m["layers"],
                     num_attention_heads=m["heads"], num_key_value_heads=m["kv_heads"], hidden_act="silu")
    system = {"Flops": g["tflops"], "Memory_size": g["mem_GB"], "Memory_BW": g["bw_GBs"], "ICN": 450,
              "real_values": True}
    ph = case["phase"]
    if ph == "prefill":
        r = prefill_moddeling(model=mc, batch_size=case["batch"], input_tokens=case["seq"], system_name=system,
                              bits="bf16", tensor_parallel=1, pipeline_parallel=1)
        return r["Latency"] / 1e3 if isinstance(r, dict) else r.Latency / 1e3
    if ph == "decode":  # one decode step over `context` cached tokens, beam size 1
        r = decode_moddeling(model=mc, batch_size=case["batch"], input_tokens=case["context"] - 1, output_tokens=1,
                             Bb=1, system_name=system, bits="bf16", tensor_parallel=1, pipeline_parallel=1)
        return r["Latency"] / 1e3 if isinstance(r, dict) else r.Latency / 1e3
    raise ValueError("GenZ (genz-llm 0.0.16) models inference only (prefill/decode), not training")


def main():
    warnings.simplefilter("ignore")
    serve(run, "genz-llm")


if __name__ == "__main__":
    main()
