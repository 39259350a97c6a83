"""The helpers every benchmark shares: where a figure was measured is never credited to another machine."""

from benchmarks.common import provenance, run_facts, short_cpu


def record(machine, date, command, **extra):
    return {
        "machine": machine,
        "cpu_count": 2,
        "threads": 2,
        "torch": "2.13.0",
        "date": date,
        "command": command,
        **extra,
    }


def test_one_machine_gives_one_clause_with_its_dates_and_distinct_commands():
    records = [
        record("AMD EPYC", "2026-11-21", "a"),
        record("AMD EPYC", "2026-11-22", "b"),
        record("AMD EPYC", "2026-11-22", "a"),
    ]
    assert provenance(records) == (
        "Measured 2026-11-21 to 2026-11-22 on AMD EPYC, 2 CPUs, 2 threads, torch 2.13.0, by `a`; `b`."
    )


def test_each_machine_is_named_with_the_commands_run_on_it_and_its_bf16():
    records = [
        record("AMD EPYC", "2026-11-21", "train"),
        record("Intel Xeon", "2026-11-22", "speed", native_bf16=True),
        record("AMD EPYC", "2026-11-21", "train"),
    ]
    assert provenance(records) == (
        "Measured 2026-11-21 on AMD EPYC, 2 CPUs, 2 threads, torch 2.13.0, by `train`; "
        "and 2026-11-22 on Intel Xeon (native bf16: yes), 2 CPUs, 2 threads, torch 2.13.0, by `speed`."
    )


def test_run_facts_name_the_cpu_and_whether_it_computes_bf16_natively():
    from attnscope.training.precision import native_bf16

    facts = run_facts()
    assert facts["machine"] and facts["native_bf16"] is native_bf16("cpu")
    assert facts["command"].startswith("python -m benchmarks.")


def test_short_cpu_drops_trademarks_and_filler_but_keeps_the_model():
    names = {
        "Intel(R) Xeon(R) Processor": "Intel Xeon",
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz": "Intel Xeon Platinum 8481C",
        "AMD EPYC 7B13 64-Core Processor": "AMD EPYC 7B13",
        "AMD EPYC": "AMD EPYC",
    }
    assert {name: short_cpu({"machine": name}) for name in names} == names
