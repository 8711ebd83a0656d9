"""The paper's experiment (Sohn, Lee, Yan 2015, section 5.1) built on the library ``cvae``: the MNIST quadrant
task, its data, run directories, evaluation, tables, figures, sample metrics and the ``cvae-sohn`` commands.

It uses the library's public API like any user; nothing in the library imports it.
"""
