"""The host ComfyUI (CPU) and the pack with its nodes: support/comfy_fixtures.py."""
from comfy_fixtures import *  # noqa: F401,F403 - fixtures
