"""Bounded cost: no step may hold a build hostage (docs/performance.md, "Step budgets").

Each step runs under a wall-time budget scaled to its model and a memory ceiling on its worker's
process tree; past either the worker is stopped, its Python stack taken first, and the node fails
with one line saying which limit, after how long and where (the planner then tries the next route).

- `limits.py`: the budgets (torch-free, computed by the orchestrator per node): `StepBudget`,
  `Budgets.for_node`, the host's memory and the default ceiling;
- `watchdog.py`: the watch over a running worker (elapsed time, resident memory of the worker and its
  children, sampled) and its stop: the stack dump asked by SIGUSR1, then SIGKILL of the whole tree;
- `stack.py`: the worker's stack dump read back from the node's log, the frame that says where it was.
"""
