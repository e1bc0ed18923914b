"""Long video on one timeline: a storyboard, windows that continue each other, drift control,
frames streamed out as they are made, and checkpoints so no finished window is ever lost."""
from .checkpoint import CheckpointError  # noqa: F401
from .generate import LongClip, generate_long, generate_long_embedded  # noqa: F401
from .storyboard import Segment, StoryboardError, Window, parse_storyboard, plan_windows  # noqa: F401
