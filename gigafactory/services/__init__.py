"""Use cases: the same code behind the Functions app and the embedded runtime, written against the ports."""
