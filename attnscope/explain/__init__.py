"""Explanations: attention maps drawn over their images (the CAM family and scores come with issue #6)."""
