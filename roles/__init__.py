"""Language-model and offline roles of the Heuristic Learning graph (video analyst, log parser, coder, test writer, reviewer)."""
