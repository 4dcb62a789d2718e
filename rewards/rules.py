"""Rule helpers other packages import by this name (kept stable; the rewards live in their modules)."""

from rewards.countdown import verify_countdown
from rewards.math_answer import extract_final, last_boxed

__all__ = ["extract_final", "last_boxed", "verify_countdown"]
