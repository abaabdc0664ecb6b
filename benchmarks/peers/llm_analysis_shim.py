"""JSON-in/JSON-out shim around llm-analysis 0.2.2, run in its own venv (it pins transformers 4.31).

stdin: {"cases": [{"id", "model": {name, hidden, layers, heads, kv_heads, intermediate, vocab, max_context},
                   "gpu": {name, tflops, bw_GBs, mem_GB}, "phase": prefill|decode|train_full|train_lora,
                   "batch", "seq", "context"}]}
stdout (last line): {"tool": "llm-analysis <version>", "results": [{"id", "time_s"} or {"id", "error"}]}

Peaks and bandwidths come from the caller (leanml's catalog) so the comparison is of the models, not the
datasheets; llm-analysis's own efficiencies are left at its defaults (1.0: ideal roofline).
"""

import logging

from shim_protocol import serve  # the shims' folder is on sys.path when run as scripts


def run(case):
    from llm_analysis.analysis import LLMAnalysis
    from llm_analysis.config import DtypeConfig, GPUConfig, ModelConfig, ParallelismConfig

    m, g = case["model"], case["gpu"]
    ffn = int(1.5 * m["intermediate"])  # SwiGLU's 3 matrices as the 2-matrix MLP llm-analysis models
    mc = ModelConfig(name=m["name"], num_layers=m["layers"], n_head=m["heads"], hidden_dim=m["hidden"],
                     vocab_size=m["vocab"], max_seq_len=m["max_context"], num_key_value_heads=m["kv_heads"],
                     ffn_embed_dim=ffn, expansion_ratio=ffn / m["hidden"], model_type="llama")
    gc = GPUConfig(name=g["name"], mem_per_GPU_in_GB=g["mem_GB"], hbm_bandwidth_in_GB_per_sec=g["bw_GBs"],
                   intra_node_bandwidth_in_GB_per_sec=450, intra_node_min_message_latency=8e-6,
                   peak_fp16_TFLOPS=g["tflops"])
    a = LLMAnalysis(mc, gc, DtypeConfig(), ParallelismConfig())
    ph = case["phase"]
    if ph == "prefill":
        return a.inference(batch_size_per_gpu=case["batch"], seq_len=case["seq"], num_tokens_to_generate=1,
                           layernorm_dtype_bytes=2)["prefill_latency"]
    if ph == "decode":  # one decode step at the given context (prompt = context - 1, one token generated)
        return a.inference(batch_size_per_gpu=case["batch"], seq_len=case["context"] - 1, num_tokens_to_generate=1,
                           layernorm_dtype_bytes=2)["decode_latency"]
    if ph == "train_full":
        return a.training(batch_size_per_gpu=case["batch"], seq_len=case["seq"], gradient_accumulation_steps=1,
                          global_batch_size=case["batch"], flash_attn=True,
                          mlp_gated_linear_units=False)["latency_per_iter"]
    raise ValueError("llm-analysis 0.2.2 has no adapter (LoRA) training model: it costs full fine-tuning only")


def main():
    logging.disable(logging.CRITICAL)
    serve(run, "llm-analysis")


if __name__ == "__main__":
    main()
