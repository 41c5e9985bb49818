//! SecAgg+ parameter choice: degree k and threshold t from (n, δ, γ, adversary class).
