"""``paw fit`` with the test envs, then what a vLLM fit under DDP must leave behind, per process.

Run as ``python tests/vllm_ddp_fit.py OUT_DIR fit ...``: Lightning starts every further process by running
this file again with the same arguments. After the fit each process writes ``OUT_DIR/after-fit-rank<r>.json``:
the result of an all-reduce on the trainer's process group (it must still work), whether any vLLM engine
this process created is still alive (shutdown must free it), the process's resident memory, and the
``rollout/engine_logprob_gap`` of each of its own rollouts (before the ranks' metrics are combined).
"""

import json
import resource
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import tests.envs.fakes  # noqa: E402,F401 - registers paw-test/RankCorridor-v0
from paw_lightning import rollout_prep as module_file  # noqa: E402
from paw_lightning.cli import cli_main  # noqa: E402
from paw_lightning.rollout import vllm_engine  # noqa: E402

ENGINES: list[weakref.ref] = []  # every vLLM engine this process created
GAPS: list[float] = []  # this process's engine_logprob_gap, one per rollout scored on vLLM


def recording(function, keep, first=lambda: None):
    """``function`` that also passes each result to ``keep`` (no local holds it: vLLM's import keeps
    frames alive, see vllm_engine.shared_llm)."""
    def wrapper(*args, **kwargs):
        first()
        return keep(function(*args, **kwargs))

    return wrapper


def kept(store: list, value):
    store.append(value)
    return value


def rss_gib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    out_dir, args = Path(sys.argv[1]), sys.argv[2:]
    before = []  # resident memory when the first engine is about to start
    vllm_engine.shared_llm = recording(vllm_engine.shared_llm, lambda llm: kept(ENGINES, weakref.ref(llm))(),
                                       lambda: before or before.append(rss_gib()))
    module_file.engine_logprob_gap = recording(module_file.engine_logprob_gap, lambda gap: gap if gap is None else kept(GAPS, gap))
    cli = cli_main(args)
    rank = cli.trainer.global_rank
    total = torch.tensor([float(rank + 1)])
    torch.distributed.all_reduce(total)  # the trainer's group, after the engine's shutdown
    report = {
        "rank": rank,
        "all_reduce": total.item(),
        "engines_created": len(ENGINES),
        "engines_alive": sum(ref() is not None for ref in ENGINES),
        "rss_before_engine_gib": round(before[0], 3) if before else None,
        "rss_gib": round(rss_gib(), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "gaps": GAPS,
    }
    (out_dir / f"after-fit-rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
