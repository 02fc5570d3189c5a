"""The speaker task: audio I/O (audio), data layout (data), batches and loss (sampler), scoring and trials
(scoring), the students (student), the task adapter (task) and the small real fixture builder (fixture)."""

from tasks.voxceleb import fetch, fixture, student  # noqa: F401  (register the fixture, its sources fsdd, orl, the students)
from tasks.voxceleb.task import VoxCeleb  # noqa: F401  (registers the task)
