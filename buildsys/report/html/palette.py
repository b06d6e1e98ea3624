"""The report's colours and status labels, shared by the page, the charts and the Markdown."""


STATUS = {  # status -> (label, foreground, background)
    "passed": ("passed", "#1a7f37", "#dafbe1"),
    "caveats": ("passed, with caveats", "#7d4e00", "#fff8c5"),
    "warn": ("missed (warn)", "#9a6700", "#fff8c5"),
    "over": ("over budget", "#bc4c00", "#fff1e5"),
    "failed": ("failed", "#cf222e", "#ffebe9"),
    "not run": ("not run", "#57606a", "#eaeef2"),
    "unverified": ("not verified", "#57606a", "#eaeef2"),
}
PRECISION_COLORS = {"fp32": "#0969da", "fp16": "#1b7c83", "bf16": "#116329", "int8": "#8250df", "int4": "#bf3989"}
ERROR_COLORS = {"max_abs": "#0969da", "max_rel": "#8250df"}
RUNTIME_COLORS = {"artifact": "#1f883d", "eager": "#8c959f"}
INK, MUTED, GRID, AXIS = "#1f2328", "#656d76", "#eaeef2", "#afb8c1"
