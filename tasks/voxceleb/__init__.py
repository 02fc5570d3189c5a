"""The speaker task: audio I/O (audio), data layout (data), batches and loss (sampler), scoring and trials
(scoring), the task adapter (task) and the small real fixture builder (fixture)."""
from tasks.voxceleb import fetch, fixture  # noqa: F401  (register the fixture and its sources fsdd, orl)
from tasks.voxceleb.task import VoxCeleb  # noqa: F401  (registers the task)
