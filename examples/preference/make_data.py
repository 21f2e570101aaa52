"""Writes the preference quickstart's data: short, direct answers preferred to rambling ones.

Each pair asks one question; `chosen` answers it in one sentence, `rejected` gives the same fact
buried in filler (a compliment, hedging, a detour, an offer to say more).  Run it from this folder
to regenerate train.jsonl, validation.jsonl and heldout.jsonl (held-out prompts, answered before and
after training so the change in answer length can be measured).  Written for tuneforge.
"""

import json
import random

FACTS = [
    ("What is the capital of France?", "Paris.", "Paris"),
    ("What is the capital of Japan?", "Tokyo.", "Tokyo"),
    ("What is the capital of Italy?", "Rome.", "Rome"),
    ("What is the capital of Spain?", "Madrid.", "Madrid"),
    ("What is the capital of Germany?", "Berlin.", "Berlin"),
    ("What is the capital of Canada?", "Ottawa.", "Ottawa"),
    ("What is the capital of Egypt?", "Cairo.", "Cairo"),
    ("What is the capital of Kenya?", "Nairobi.", "Nairobi"),
    ("What is the capital of Peru?", "Lima.", "Lima"),
    ("What is the capital of Norway?", "Oslo.", "Oslo"),
    ("How many days are in a week?", "Seven.", "7"),
    ("How many legs does a spider have?", "Eight.", "8"),
    ("How many continents are there?", "Seven.", "7"),
    ("How many minutes are in an hour?", "Sixty.", "60"),
    ("How many hours are in a day?", "Twenty-four.", "24"),
    ("How many sides does a triangle have?", "Three.", "3"),
    ("How many sides does a hexagon have?", "Six.", "6"),
    ("How many months are in a year?", "Twelve.", "12"),
    ("What is 2 plus 3?", "5.", "5"),
    ("What is 7 times 6?", "42.", "42"),
    ("What is 10 minus 4?", "6.", "6"),
    ("What is 9 times 9?", "81.", "81"),
    ("What is 100 divided by 4?", "25.", "25"),
    ("What is 15 plus 27?", "42.", "42"),
    ("What is the square root of 49?", "7.", "7"),
    ("What color is the sky on a clear day?", "Blue.", "blue"),
    ("What color are ripe bananas?", "Yellow.", "yellow"),
    ("What color is grass?", "Green.", "green"),
    ("What do bees make?", "Honey.", "honey"),
    ("What gas do plants take in from the air?", "Carbon dioxide.", "carbon dioxide"),
    ("What is frozen water called?", "Ice.", "ice"),
    ("At what temperature does water boil at sea level, in Celsius?", "100 degrees Celsius.", "100"),
    ("At what temperature does water freeze, in Celsius?", "0 degrees Celsius.", "0"),
    ("Which planet is closest to the Sun?", "Mercury.", "Mercury"),
    ("Which planet is known as the Red Planet?", "Mars.", "Mars"),
    ("What is the largest planet in our solar system?", "Jupiter.", "Jupiter"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean.", "Pacific"),
    ("What is the tallest mountain on Earth?", "Mount Everest.", "Everest"),
    ("What is the longest river in Africa?", "The Nile.", "Nile"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare.", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci.", "Leonardo"),
    ("What is the chemical symbol for gold?", "Au.", "Au"),
    ("What is the chemical symbol for water?", "H2O.", "H2O"),
    ("What is the opposite of hot?", "Cold.", "cold"),
    ("What is the opposite of up?", "Down.", "down"),
    ("What is the plural of mouse?", "Mice.", "mice"),
    ("What is the past tense of run?", "Ran.", "ran"),
    ("What animal is known as the king of the jungle?", "The lion.", "lion"),
    ("What is the fastest land animal?", "The cheetah.", "cheetah"),
    ("What is the largest mammal?", "The blue whale.", "whale"),
    ("How many strings does a standard guitar have?", "Six.", "6"),
    ("How many players are on a soccer team on the field?", "Eleven.", "11"),
    ("What language is spoken in Brazil?", "Portuguese.", "Portuguese"),
    ("What is the main language of Mexico?", "Spanish.", "Spanish"),
    ("What currency is used in Japan?", "The yen.", "yen"),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees Fahrenheit.", "32"),
    ("How many bones are in the adult human body?", "206.", "206"),
    ("What organ pumps blood through the body?", "The heart.", "heart"),
    ("What do caterpillars turn into?", "Butterflies or moths.", "butterfl"),
    ("What is the first letter of the English alphabet?", "A.", "A"),
    ("Give a synonym for happy.", "Glad.", "glad"),
    ("Give an antonym for big.", "Small.", "small"),
    ("Name a primary color.", "Red.", "red"),
    ("Name a fruit that is red.", "A strawberry.", "strawberry"),
    ("What shape has four equal sides and four right angles?", "A square.", "square"),
    ("How many zeros are in one thousand?", "Three.", "3"),
    ("What is half of 50?", "25.", "25"),
    ("What is double 12?", "24.", "24"),
    ("What day comes after Monday?", "Tuesday.", "Tuesday"),
    ("What month comes after June?", "July.", "July"),
    ("What season comes after winter?", "Spring.", "spring"),
    ("Which is heavier, a kilogram of iron or a kilogram of feathers?", "Neither; they weigh the same.", "same"),
    ("What is the boiling point of water in Fahrenheit?", "212 degrees Fahrenheit.", "212"),
    ("What instrument has 88 keys?", "The piano.", "piano"),
    ("What is the hardest natural substance?", "Diamond.", "diamond"),
    ("Which star is at the center of our solar system?", "The Sun.", "Sun"),
    ("What is the capital of Australia?", "Canberra.", "Canberra"),
    ("What is the capital of Portugal?", "Lisbon.", "Lisbon"),
    ("What is the capital of Greece?", "Athens.", "Athens"),
    ("What is the capital of Sweden?", "Stockholm.", "Stockholm"),
    ("How many wheels does a bicycle have?", "Two.", "2"),
    ("How many seconds are in a minute?", "Sixty.", "60"),
    ("What is 8 plus 8?", "16.", "16"),
    ("What is 3 times 5?", "15.", "15"),
    ("What is 20 minus 7?", "13.", "13"),
    ("What is the color of snow?", "White.", "white"),
    ("What do cows drink?", "Water.", "water"),
    ("What is the largest desert in the world?", "Antarctica; the largest hot desert is the Sahara.", "Antarctica"),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong.", "Armstrong"),
    ("What is the smallest prime number?", "2.", "2"),
    ("How many vowels are in the English alphabet?", "Five: a, e, i, o and u.", "5"),
    ("What is the capital of Ireland?", "Dublin.", "Dublin"),
    ("What is the capital of Argentina?", "Buenos Aires.", "Buenos Aires"),
    ("What is the capital of India?", "New Delhi.", "Delhi"),
    ("What is the capital of China?", "Beijing.", "Beijing"),
    ("What is 12 divided by 3?", "4.", "4"),
    ("What is 5 squared?", "25.", "25"),
    ("How many weeks are in a year?", "52.", "52"),
    ("How many centimeters are in a meter?", "100.", "100"),
    ("What is the opposite of early?", "Late.", "late"),
    ("What is the plural of child?", "Children.", "children"),
    ("What is the past tense of eat?", "Ate.", "ate"),
    ("What do you call a baby cat?", "A kitten.", "kitten"),
    ("What do you call a baby dog?", "A puppy.", "puppy"),
    ("What is the main ingredient of guacamole?", "Avocado.", "avocado"),
    ("What is the capital of Russia?", "Moscow.", "Moscow"),
    ("What is the capital of Turkey?", "Ankara.", "Ankara"),
    ("What is 6 plus 9?", "15.", "15"),
    ("What is 11 times 11?", "121.", "121"),
    ("How many planets are in our solar system?", "Eight.", "8"),
    ("What is the color of a ripe tomato?", "Red.", "red"),
    ("Which bird is a symbol of peace?", "The dove.", "dove"),
    ("What metal is liquid at room temperature?", "Mercury.", "Mercury"),
    ("What is the capital of Poland?", "Warsaw.", "Warsaw"),
    ("What is the capital of the Netherlands?", "Amsterdam.", "Amsterdam"),
    ("How many legs does an insect have?", "Six.", "6"),
    ("What is 30 plus 12?", "42.", "42"),
    ("What is the square root of 81?", "9.", "9"),
    ("What is the opposite of open?", "Closed.", "closed"),
]

OPENERS = [
    "Great question! This is something a lot of people wonder about, and it is worth taking a moment to think it through carefully.",
    "Thanks for asking. Before I answer, I want to say that questions like this are a wonderful way to learn, and there is a lot of interesting background here.",
    "Ah, that is a really interesting thing to ask about! Let me walk you through it step by step, because context matters.",
    "Well, there are several ways to look at this, and different sources sometimes phrase it differently, so let me try to cover the main points.",
    "I'd be happy to help with that! It's a topic with a surprising amount of history behind it, so bear with me for a moment.",
]
MIDDLES = [
    "If I had to put it simply, I would say the answer is {a}",
    "Most people would agree, after considering everything, that it is {a}",
    "So, to get to the point eventually, the answer turns out to be {a}",
    "Putting all of that together, the commonly accepted answer is {a}",
]
CLOSERS = [
    "Of course, there is always more to learn, so feel free to ask if you want me to go deeper into any part of this!",
    "I hope that helps! Let me know if you have any other questions, I'm always glad to chat about this kind of thing.",
    "That said, it is always a good idea to double-check with other sources, and I'm happy to explain further if you like.",
    "There are many more fascinating details I could mention, so just say the word if you want to hear them.",
]


def rambling(answer: str, rng: random.Random) -> str:
    return " ".join([rng.choice(OPENERS), rng.choice(MIDDLES).format(a=answer), rng.choice(CLOSERS)])


def main() -> None:
    rng = random.Random(7)
    facts = FACTS[:]
    rng.shuffle(facts)
    held_out, validation, train = facts[:16], facts[16:28], facts[28:]
    with open("train.jsonl", "w") as out:
        for question, answer, _ in train:
            out.write(json.dumps({"prompt": question, "chosen": answer, "rejected": rambling(answer, rng)}) + "\n")
    with open("validation.jsonl", "w") as out:
        for question, answer, _ in validation:
            out.write(json.dumps({"prompt": question, "chosen": answer, "rejected": rambling(answer, rng)}) + "\n")
    with open("heldout.jsonl", "w") as out:
        for question, _, expect in held_out:
            out.write(json.dumps({"prompt": question, "expect": [expect]}) + "\n")


if __name__ == "__main__":
    main()
