"""Moving a bundle across the air gap: media splits with parity, and their joins."""
