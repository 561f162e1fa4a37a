"""The team's MLflow server seen from both sides: the server's app (`app`: users, who owns a
model name) and a client's check of who made a model before it loads (`provenance`)."""
