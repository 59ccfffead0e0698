"""The tasks (refine, expand, pairs): model resolution, one sampling loop that every front end
drives, and the quality filters."""
