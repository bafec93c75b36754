"""Explore it yourself: a page (ipywidgets served by Voilà) where a reader picks a trained run,
types a sentence and sees its top proponents and opponents under TracIn-WE and TracIn-Last, word
by word, and, for the CNN, what deleting them and retraining does. ``session`` holds the logic,
``app`` the widgets, ``explore.ipynb`` the page; ``python -m tracin_we.explore`` (``make
explore``) serves it."""
