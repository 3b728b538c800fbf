"""`python -m pipeline.predict`: classify a user's photos (photo: picture -> model input;
classify: the models' answers, on the host or a board)."""
