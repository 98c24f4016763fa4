"""The modules behind ``python -m data_pipeline COMMAND`` (``data_pipeline.cli``): each has
``add_arguments(parser)`` and ``main(args)``, turns flags into calls of the packages, and
prints; a module is named after what its command does."""
