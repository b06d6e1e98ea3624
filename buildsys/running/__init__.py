"""Running a plan: the builder, worker processes and their pool, the Dask executor, progress."""
