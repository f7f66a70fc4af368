"""The chaos test: randomized kill -9s and fail points against a real town (README.md)."""
