"""Development-only tools: the demo stack, local stand-ins, sample streams, the dashboard generator.

Not part of the wheel or the image: nothing under daemon/ may import from here.
"""
