"""GPU workers: take runs off the queue and execute them in the sandbox."""
