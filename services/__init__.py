"""The autoresearch service: controller, workers, committer and their shared core."""
