"""Lightning's FSDP strategy around PaWModule in one CPU process: `python tests/fsdp_on_cpu.py OUT_DIR`.

Lightning refuses ``strategy="fsdp"`` without a GPU and torch's FSDP wants an accelerator unless it is
given ``device_id=cpu``; ``CPUFSDPStrategy`` only adds that, everything else is Lightning's FSDP
(wrapping, optimiser, full-state-dict checkpoints) with the defaults PaWModule sets for it. Fits the
tiny model fully and with LoRA for two iterations each, and prints one JSON line per run; then (where vLLM
is installed) a LoRA run whose generate rollouts run on vLLM: the sync reads the gathered full weights
(``full_params``) and merges the adapter into them.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import FSDPStrategy  # noqa: E402
from torch.distributed.fsdp import FullyShardedDataParallel  # noqa: E402

import tests.envs.fakes  # noqa: E402,F401 - registers paw-test/Corridor-v0
from paw_lightning.callbacks import ActionEntropySelection, RewardAdaptiveBalancing  # noqa: E402
from paw_lightning.module import PaWModule  # noqa: E402
from paw_lightning.rollout.datamodule import RolloutDataModule  # noqa: E402
from paw_lightning.rollout.engines import vllm_available  # noqa: E402


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with ``device_id=cpu`` (one CPU process, gloo): for tests only."""

    def _setup_model(self, model):
        return FullyShardedDataParallel(model, sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)


def run(out: Path, lora_rank: int, **data) -> dict:
    L.seed_everything(0)
    module = PaWModule(lr=1e-3, lora_rank=lora_rank, kl_coef=0.01)
    dm = RolloutDataModule(env_id="paw-test/Corridor-v0", num_groups=2, group_size=2, max_steps=3, mini_batch_size=4, progress=False, **data)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, strategy=CPUFSDPStrategy(), max_epochs=2, logger=False, default_root_dir=out,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[ActionEntropySelection(), RewardAdaptiveBalancing()],
    )
    trainable = {k: v.detach().clone() for k, v in module.model.named_parameters() if v.requires_grad}
    trainer.fit(module, dm)
    wrapped = trainer.strategy.model
    units = sum(isinstance(m, FullyShardedDataParallel) for m in wrapped.modules())
    # nested FSDP units add "_fsdp_wrapped_module." to the parameter names
    now = {k.replace("_fsdp_wrapped_module.", ""): v for k, v in module.model.named_parameters()}
    trainer.save_checkpoint(out / f"lora{lora_rank}.ckpt")
    checkpoint = torch.load(out / f"lora{lora_rank}.ckpt", weights_only=False)
    return {
        "lora_rank": lora_rank,
        "wrapped": isinstance(wrapped, FullyShardedDataParallel),
        "fsdp_units": units,
        "decoder_layers": sum(type(m).__name__.endswith("DecoderLayer") for m in module.modules()),
        "trainable": len(trainable),
        "changed": sum(not torch.equal(v, now[k].detach()) for k, v in trainable.items()),
        "iterations": dm.iteration,
        # the full state dict has a plain PaWModule's names, so a single-device run can load it
        "checkpoint_keys_match": sorted(checkpoint["state_dict"]) == sorted(PaWModule(lora_rank=lora_rank).state_dict()),
        "checkpoint_iteration": checkpoint["RolloutDataModule"]["iteration"],
        "success_rate": module.rollout_metrics.get("episode/success_rate"),
        "engine_logprob_gap": module.rollout_metrics.get("rollout/engine_logprob_gap"),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for rank in (0, 4):
        print(json.dumps(run(out, rank)), flush=True)
    if vllm_available():
        vllm = dict(engine="vllm", actor="generate", max_new_tokens=6, env_kwargs={"free_text": True}, vllm_dtype="float32",
                    vllm_kv_cache_gib=1, vllm_lora_sync="merged")
        print(json.dumps(run(out, 4, **vllm) | {"engine": "vllm"}), flush=True)
