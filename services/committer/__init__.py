"""The committer: the one process that decides on scored proposals and writes the research repo."""
