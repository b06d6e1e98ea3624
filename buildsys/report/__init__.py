"""Reports of a build: the console summary and the HTML/Markdown report."""
