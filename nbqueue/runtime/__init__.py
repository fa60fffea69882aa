"""Running tasks: the worker pool, the scheduler thread, what a task sees of itself."""
