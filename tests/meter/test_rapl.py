from pathlib import Path

from leanml.meter import Meter, RaplReader


def make_zone(root: Path, name: str, energy_uj: int, max_range: int = 1_000_000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    (d / "name").write_text("package-0\n")
    return d


def test_sums_packages_and_ignores_subzones(tmp_path):
    p0 = make_zone(tmp_path, "intel-rapl:0", 1000)
    p1 = make_zone(tmp_path, "intel-rapl:1", 5000)
    sub = make_zone(tmp_path, "intel-rapl:0:0", 0)  # core sub-zone: already inside package 0
    r = RaplReader(root=tmp_path)
    r.start()
    (p0 / "energy_uj").write_text("3000000")  # +2.999 J
    (p1 / "energy_uj").write_text("1005000")  # +1.0 J
    (sub / "energy_uj").write_text("999999")
    # max_range of 1_000_000 would make p0 wrap; give it a large range instead
    (p0 / "max_energy_range_uj").write_text("10000000000")
    r2 = RaplReader(root=tmp_path)
    r2.start()
    (p0 / "energy_uj").write_text("5000000")
    (p1 / "energy_uj").write_text("2005000")
    assert abs(r2.joules() - (2.0 + 1.0)) < 1e-9


def test_counter_wrap_around(tmp_path):
    z = make_zone(tmp_path, "intel-rapl:0", energy_uj=999_000, max_range=1_000_000)
    r = RaplReader(root=tmp_path)
    r.start()
    (z / "energy_uj").write_text("2000")  # wrapped: 999_000 -> 1_000_000 -> 0 -> 2000
    r.sample()
    (z / "energy_uj").write_text("502000")
    total_uj = (1_000_000 - 999_000 + 1) + 2000 + 500_000
    assert abs(r.joules() - total_uj / 1e6) < 1e-12


def test_unreadable_counter_makes_energy_unavailable_not_zero(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", 10)
    bad = tmp_path / "intel-rapl:1"
    bad.mkdir()
    (bad / "energy_uj").mkdir()  # reading a directory fails like a permission-denied file
    (bad / "max_energy_range_uj").write_text("100")
    r = RaplReader(root=tmp_path)
    r.start()
    assert r.joules() is None
    assert "intel-rapl:1" in r.unavailable_reason


def test_missing_powercap_is_unavailable(tmp_path):
    r = RaplReader(root=tmp_path / "nope")
    r.start()
    assert r.joules() is None and "no powercap" in r.unavailable_reason


def test_meter_reads_fake_rapl_during_block(tmp_path):
    z = make_zone(tmp_path, "intel-rapl:0", 0, max_range=10**12)
    with Meter(powercap_root=tmp_path, sample_interval_s=0.01) as m:
        (z / "energy_uj").write_text("7500000")
    assert m.cost.energy_cpu_j == 7.5
    assert "energy_cpu_j" not in m.cost.notes
