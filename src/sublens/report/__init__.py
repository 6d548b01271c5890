"""Reporting: reads run directories only (never loads a model) and writes LaTeX, figures, drafts."""
