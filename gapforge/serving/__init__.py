"""The serving image (issue 26, first slice): llama.cpp's OpenAI-compatible server from its own lock, assembled by our layer writers and pretested with the network cut."""
