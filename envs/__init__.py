"""Text environments for paw-lightning (installed as ``paw_lightning.envs``).

Importing this package registers the Gymnasium ids ``paw/TextWorld-v0``, ``paw/ALFWorld-v0``, ``paw/ScienceWorld-v0``,
``paw/TextWorldExpress-v0``, ``paw/Gymnasium-v0`` (any Discrete-action Gymnasium env as a text env, envs/wrappers.py)
``paw/Sokoban-v0`` (envs/sokoban.py) and ``paw/BabyAI-v0`` (envs/babyai.py).
Register your own env the same way and name its id in a config's ``data.env_id``; no framework code changes.
"""

import gymnasium as gym

from paw_lightning.envs.base import check_text_env_step, text_space, tidy_text

_REGISTRATIONS = {
    "paw/TextWorld-v0": "paw_lightning.envs.textworld:TextWorldEnv",
    "paw/ALFWorld-v0": "paw_lightning.envs.alfworld:ALFWorldEnv",
    "paw/ScienceWorld-v0": "paw_lightning.envs.scienceworld:ScienceWorldEnv",
    "paw/TextWorldExpress-v0": "paw_lightning.envs.textworld_express:TextWorldExpressEnv",
    "paw/Gymnasium-v0": "paw_lightning.envs.wrappers:make_gymnasium_text_env",
    "paw/Sokoban-v0": "paw_lightning.envs.sokoban:SokobanEnv",
    "paw/BabyAI-v0": "paw_lightning.envs.babyai:BabyAIEnv",
}

for _env_id, _entry_point in _REGISTRATIONS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point)

__all__ = ["check_text_env_step", "text_space", "tidy_text"]
