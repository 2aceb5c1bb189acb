"""The download stage's library: img2dataset driven from params, every URL accounted for."""
