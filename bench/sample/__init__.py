"""The shipped sample (installed as package data `vecz.sample`): 5,000 wordnet-minilm
vectors (float16, 384-d), 200 queries and their texts; see README.md here."""
