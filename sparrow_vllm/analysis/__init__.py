"""Looking inside a target: from which layer its text rows no longer need the visual rows
(`sparrow-vllm analyze`)."""
