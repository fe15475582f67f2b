"""The language model: open_lm's architecture (args: the numbers, no torch; transformer: the module),
checkpoint loading, vocabulary widening, freezing."""
