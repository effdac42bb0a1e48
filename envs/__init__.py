"""Text environments for paw-lightning (installed as ``paw_lightning.envs``).

Importing this package registers the Gymnasium ids ``paw/TextWorld-v0`` and ``paw/ALFWorld-v0``. Register your own env the same
way and name its id in a config's ``data.env_id``; no framework code changes.
"""

import gymnasium as gym

from paw_lightning.envs.base import check_text_env_step, text_space, tidy_text

_REGISTRATIONS = {
    "paw/TextWorld-v0": "paw_lightning.envs.textworld:TextWorldEnv",
    "paw/ALFWorld-v0": "paw_lightning.envs.alfworld:ALFWorldEnv",
}

for _env_id, _entry_point in _REGISTRATIONS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point)

__all__ = ["check_text_env_step", "text_space", "tidy_text"]
