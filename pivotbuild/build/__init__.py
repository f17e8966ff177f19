"""The build: the engine, the decider, scheduling, admission and the job server, the executors, the recorder."""
