"""Pure media transforms over third-party libraries: crypto, decoding, PCM maths."""
