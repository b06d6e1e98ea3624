"""The command line: plan, build, verify, bench, bundle and the inspection, cache and release verbs."""
