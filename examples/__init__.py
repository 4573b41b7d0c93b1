"""Worked plug-in backends: your own recurrent code measured by rnnbench (see README, "Bring your own backend")."""
