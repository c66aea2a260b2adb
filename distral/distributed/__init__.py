"""The distributed run (DESIGN.md section 3): Reverb replay, actors, the learner shell,
the worker entry points, and the launcher with its local-process and Ray backends."""
