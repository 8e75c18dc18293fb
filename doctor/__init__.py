"""`heurist doctor`: one check per part of the installation."""
