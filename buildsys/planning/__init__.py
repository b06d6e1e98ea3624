"""Planning: the whole decision of what to build, by which route, and why; the only writer of deploy.lock."""
