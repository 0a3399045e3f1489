"""The sentences of ``bench_gptq.py``: a varied evaluation set and a disjoint calibration set.

The evaluation set (72 inputs) spans one word (3 tokens with [CLS] and [SEP]) to 41 tokens:
everyday prose, questions, lists, numbers, six other languages, lines of code, a URL, an e-mail
address, a shouted headline and repeated punctuation, so the mean cosine is not an average over
near-identical sentences.
The calibration set is everyday English of another kind plus a few technical and
non-English lines; no sentence appears in both (checked when the benchmark starts).
"""

from mono_quant.demo_static import CALIBRATION_SENTENCES as DEMO_CALIBRATION_SENTENCES

EVAL_SENTENCES = (
    # one word, a few tokens
    "Hello",
    "Quantization",
    "Why?",
    "Thanks!",
    "Berlin",
    "42",
    "antidisestablishmentarianism",
    "OK",
    # short
    "The cat sleeps.",
    "Rain again today.",
    "Where is the station?",
    "I love this song.",
    "Turn left at the bank.",
    "Coffee or tea?",
    "She laughed.",
    "Prices went up.",
    # everyday prose
    "The cat sits on the warm windowsill in the afternoon sun.",
    "Our flight to Lisbon was delayed by three hours because of fog.",
    "He forgot his umbrella and got soaked on the way home.",
    "Fresh bread from the bakery smells wonderful in the morning.",
    "The children built a sandcastle that the tide washed away by evening.",
    "My neighbour's dog barks every time the postman rings the bell.",
    "We missed the last bus and had to walk home through the park.",
    "The soup needs more salt, but the bread is perfect.",
    # news, science, finance
    "The central bank raised interest rates by a quarter point on Wednesday.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "Mount Everest is the highest mountain above sea level, at 8,849 metres.",
    "Shares of the chipmaker fell 7% after it cut its revenue forecast for the year.",
    "The vaccine trial enrolled 30,000 volunteers across twelve countries.",
    "Astronomers detected water vapour in the atmosphere of a planet 120 light-years away.",
    "The city council voted 7 to 2 to expand the bicycle lanes downtown.",
    "Inflation slowed to 2.4 percent in March, the lowest reading in three years.",
    # questions and instructions
    "How do I reset my password if I no longer have access to my email?",
    "Can you recommend a good book about the history of mathematics?",
    "Preheat the oven to 200 degrees and bake for twenty-five minutes.",
    "Please send the signed contract back by Friday at the latest.",
    "What is the difference between a virus and a bacterium?",
    "Remove the battery before cleaning the device with a damp cloth.",
    # technical
    "Large language models predict the next token in a sequence.",
    "Quantization stores neural network weights in fewer bits.",
    "The garbage collector frees memory that is no longer referenced.",
    "A hash table gives constant-time lookups on average.",
    "Gradient descent updates the parameters in the direction that lowers the loss.",
    "The kernel reads the weights once and reuses them for every token in the batch.",
    # code, URLs, addresses
    "def add(a, b): return a + b",
    "for (int i = 0; i < n; i++) { sum += x[i] * w[i]; }",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "git commit -m 'fix off-by-one error in the tokenizer'",
    "import torch; model = torch.nn.Linear(384, 1536)",
    "https://example.com/docs/getting-started?lang=en#install",
    "Contact us at support@example.org for a refund.",
    # other languages
    "Le chat dort sur le canapé depuis ce matin.",
    "Der Zug nach München hat zwanzig Minuten Verspätung.",
    "El mercado abre a las ocho y cierra a mediodía.",
    "Il ristorante è chiuso il lunedì.",
    "Wie spät ist es?",
    "Muchas gracias por tu ayuda.",
    "Obrigado pela sua paciência e pela ajuda de ontem.",
    "De fiets staat achter het huis.",
    # unusual forms
    "BREAKING: STORM CLOSES ALL SCHOOLS IN THE REGION",
    "wait... what?!?!",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "Milk, eggs, flour, sugar, butter, vanilla, baking powder.",
    "lol that was so funny",
    # long (30+ tokens)
    "Although the committee had debated the proposal for several weeks, it finally approved the budget "
    "after the treasurer showed that the new library could be built without raising local taxes.",
    "When the power went out during the storm, the whole street gathered in the old bakery, where the "
    "owner lit candles, brewed coffee on a gas stove and told stories until morning.",
    "The researchers compared three training methods on twelve benchmarks and found that the simplest "
    "one, with a carefully tuned learning rate, matched the others while using half the compute.",
    "To install the package, create a virtual environment, activate it, run pip install with the "
    "requirements file, and then start the server with the configuration in the examples folder.",
    "Despite heavy rain and a strong headwind for most of the route, more than two thousand runners "
    "finished the marathon, and the winner set a new course record by almost a minute.",
    "She spent the summer travelling by train from Lisbon to Istanbul, sleeping in hostels, learning a "
    "few words of every language and filling three notebooks with sketches of the people she met.",
    "If the input tensor is not contiguous, the function makes a copy first, which costs memory and "
    "time, so callers that care about speed should pass contiguous tensors of the expected dtype.",
    "The museum's new wing displays tools, pottery and jewellery found at the site, along with a "
    "reconstruction of a house from the period and a short film about how the excavation was done.",
)

# The demo's 48 everyday sentences, then short inputs, code and other languages.
CALIBRATION_SENTENCES = DEMO_CALIBRATION_SENTENCES + (
    "Good morning",
    "Goodbye",
    "Is it raining?",
    "return sorted(items, key=lambda item: item.price)",
    "while not done: done = step(state)",
    "La bibliothèque ferme à dix-huit heures.",
    "Ich habe meinen Schlüssel im Büro vergessen.",
    "¿Dónde está la farmacia más cercana?",
    "The quarterly report, which was delayed twice because of missing data from two regional offices, "
    "finally reached the board on Thursday and showed higher sales than anyone had expected.",
    "After three hours of searching the forest with torches and dogs, the volunteers found the lost "
    "hiker sitting by a stream, cold and hungry but otherwise unharmed.",
    "Version 2.0 adds offline mode, faster search and a dark theme.",
    "Call 555-0199 between 9 a.m. and 5 p.m. to book an appointment.",
    "The Wi-Fi password is written on the back of the router.",
    "Turn off the lights when you leave the room.",
    "An apple a day keeps the doctor away.",
    "The referee blew the whistle and the crowd went silent.",
)
