"""Text for SynthMusic clips: Clotho-style captions and the three metadata kinds of the hybrid paper.

Every clip of :mod:`hybrid_retrieval.data.synthmusic` gets

* five **captions** (the queries): one plain English sentence of 8-20 words each, built from
  many templates and a paraphrase lexicon (synonyms for every factor value), each mentioning a
  random subset of the clip's properties, the way Clotho captions describe what a listener hears;
* **closed-set tags** (CS, metadata kind "cs"): canonical names from the fixed vocabulary
  :data:`CS_VOCABULARY` (genre, mood, lead instrument, "<bin> tempo", accompaniment instruments);
* **open-set keywords** (OS, kind "os"): Freesound-like tags, lower case and hyphenated, with
  synonyms, spelling variants, irrelevant tags, missing tags, exact BPM/key tags and wrong tags;
* a **free-form description** (FS, kind "fs"): one sentence in an uploader's voice, worded
  differently from the captions, that mostly states key and BPM and omits other factors.

How the metadata relates to the audio and the captions (the knobs are :class:`MetadataNoise`):

* Redundant (audible, in captions and in metadata): genre, mood, lead instrument, tempo bin.
  Each metadata kind drops each of them independently (``cs_drop``, ``os_keep``, ``fs_*``), so a
  metadata-only system cannot answer every query.
* Complementary: the metadata names things captions almost never mention but that help to tell
  clips apart, such as the exact BPM, the key (``os_bpm``, ``os_key``, ``fs_bpm``, ``fs_key``) and
  the accompanying instruments; the captions mention what metadata never has (events such as a
  drum fill, a break, a fade-out, a crescendo or an unaccompanied intro; dynamics; articulation),
  which only the audio can confirm.
* Noise: OS tags use synonyms and misspellings (``os_synonym``, ``os_misspell``), add irrelevant
  tags (``os_irrelevant_mean``), and are sometimes wrong: a wrong genre, mood or instrument tag is
  added with small probability (``os_wrong_*``); CS tags are wrong with a smaller probability
  (``cs_wrong``); FS rounds the BPM and rarely states the mood (``fs_mood``).

A hybrid (audio + metadata) system can therefore gain from the metadata, but the metadata does not
contain the answer by construction. All randomness comes from the caller's ``numpy`` generator.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from hybrid_retrieval.errors import BadInputError

CAPTIONS_PER_CLIP = 5
CAPTION_MIN_WORDS = 8
CAPTION_MAX_WORDS = 20


@dataclass(frozen=True)
class MetadataNoise:
    """Probabilities that decide what each text kind says about a clip (see the module docstring).

    caption_mention: factor -> probability that an optional mention of it in a caption template
        is kept (templates also have required mentions, so the realised rates are higher).
    cs_drop: probability that a CS tag of a factor is left out; cs_accompaniment: probability that
        each accompaniment instrument gets a CS tag; cs_wrong: probability that a factor's CS tag is
        replaced by a wrong value of the same factor.
    os_keep: factor -> probability that the OS keywords mention the factor at all.
    os_synonym / os_misspell: probability that a mentioned value uses a synonym / a misspelling.
    os_wrong_genre / os_wrong_mood / os_wrong_instrument: probability that a wrong tag of that
        factor is added (the right one may be present too).
    os_irrelevant_mean: mean number of irrelevant tags ("loop", "my-song", "field-recording", ...).
    fs_*: probability that the FS sentence states genre, mood, lead instrument, key, BPM and
        accompaniment.
    """

    caption_mention: dict[str, float] = field(default_factory=lambda: {
        "genre": 0.6, "mood": 0.7, "instrument": 0.75, "tempo": 0.45,
        "accompaniment": 0.4, "event": 0.55, "key": 0.05,
    })
    cs_drop: float = 0.15
    cs_accompaniment: float = 0.3
    cs_wrong: float = 0.02
    os_keep: dict[str, float] = field(default_factory=lambda: {
        "genre": 0.7, "mood": 0.5, "instrument": 0.75, "tempo": 0.3,
        "bpm": 0.5, "key": 0.35, "accompaniment": 0.4,
    })
    os_synonym: float = 0.4
    os_misspell: float = 0.12
    os_wrong_genre: float = 0.06
    os_wrong_mood: float = 0.08
    os_wrong_instrument: float = 0.04
    os_irrelevant_mean: float = 2.0
    fs_genre: float = 0.75
    fs_mood: float = 0.15
    fs_instrument: float = 0.5
    fs_key: float = 0.85
    fs_bpm: float = 0.85
    fs_accompaniment: float = 0.25

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            values = value.items() if isinstance(value, dict) else [(name, value)]
            for key, prob in values:
                limit = 20.0 if key == "os_irrelevant_mean" else 1.0
                if not (isinstance(prob, (int, float)) and 0.0 <= float(prob) <= limit):
                    raise BadInputError(f"MetadataNoise.{name}: {key}={prob!r} is not in [0, {limit}]")
        missing = {"genre", "mood", "instrument", "tempo", "accompaniment", "event", "key"} - set(self.caption_mention)
        missing |= {"genre", "mood", "instrument", "tempo", "bpm", "key", "accompaniment"} - set(self.os_keep)
        if missing:
            raise BadInputError(f"MetadataNoise: missing probabilities for {sorted(missing)}")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Paraphrase lexicon. Keys are the canonical factor values of synthmusic_factors.py.

MOOD_WORDS = {
    "happy": ["happy", "cheerful", "upbeat", "joyful", "bright", "playful", "sunny", "lively", "carefree"],
    "sad": ["sad", "melancholic", "mournful", "gloomy", "somber", "wistful", "sorrowful", "downcast"],
    "tense": ["tense", "suspenseful", "ominous", "anxious", "nervous", "uneasy", "menacing", "edgy"],
    "calm": ["calm", "relaxed", "peaceful", "gentle", "soothing", "tranquil", "mellow", "serene"],
}

INSTRUMENT_WORDS = {
    "piano": ["piano", "grand piano", "acoustic piano"],
    "vibraphone": ["vibraphone", "vibraphone", "mallet vibraphone"],
    "nylon guitar": ["nylon guitar", "classical guitar", "nylon-string guitar", "acoustic guitar"],
    "violin": ["violin", "fiddle", "violin"],
    "trumpet": ["trumpet", "trumpet", "brassy trumpet"],
    "alto sax": ["saxophone", "sax", "alto saxophone", "alto sax"],
    "flute": ["flute", "flute", "concert flute"],
    "clarinet": ["clarinet", "clarinet", "woody clarinet"],
    "organ": ["organ", "electric organ", "drawbar organ", "Hammond-style organ"],
    "synth lead": ["synthesizer", "synth", "square-wave synth", "electronic synth"],
}

# The whole piece, as a noun phrase head ("a ___").
GENRE_PIECE = {
    "rock": ["rock song", "rock tune", "rock track", "rock and roll number"],
    "swing jazz": ["swing tune", "jazz number", "swinging jazz tune", "swing jazz piece"],
    "waltz": ["waltz", "lilting waltz", "waltz in three", "old-fashioned waltz"],
    "bossa nova": ["bossa nova", "bossa nova tune", "Brazilian bossa nova song", "bossa nova piece"],
    "techno": ["techno track", "techno tune", "electronic dance track", "club track"],
    "ballad": ["ballad", "pop ballad", "love ballad", "soft ballad"],
    "march": ["march", "military march", "marching tune", "brass band march"],
    "reggae": ["reggae song", "reggae tune", "reggae track", "roots reggae tune"],
}

# The rhythm section, as a full noun phrase ("over ___").
GENRE_BACKING = {
    "rock": ["a driving rock beat", "rock drums and bass", "a steady rock groove", "pounding rock drums"],
    "swing jazz": ["a swinging drum beat and walking bass", "a swing rhythm section",
                   "a swinging ride cymbal and walking bass", "a jazzy swing groove"],
    "waltz": ["a lilting waltz rhythm", "an oom-pah-pah accompaniment in three", "a rhythm in three-four time",
              "a gentle waltz beat"],
    "bossa nova": ["a soft bossa nova groove", "a gentle Latin rhythm", "a bossa nova beat with rim clicks",
                   "a syncopated Brazilian groove"],
    "techno": ["a pounding four-on-the-floor kick", "a thumping techno beat", "a steady electronic dance beat",
               "a repetitive club beat"],
    "ballad": ["a soft ballad accompaniment", "gentle ballad drums", "a tender ballad groove",
               "a soft backbeat"],
    "march": ["a marching snare drum", "a military march beat", "march drums and an oom-pah tuba",
              "crisp marching drums"],
    "reggae": ["an offbeat reggae rhythm", "a laid-back reggae groove", "a one-drop reggae beat",
               "choppy offbeat reggae chords"],
}

TEMPO_ADJ = {  # before a noun: "a ___ tune"
    "slow": ["slow", "slow-paced", "leisurely", "unhurried", "slow-moving"],
    "medium": ["mid-tempo", "moderately paced", "steady", "medium-paced"],
    "fast": ["fast", "fast-paced", "brisk", "up-tempo", "quick", "rapid"],
}
TEMPO_PACE = {  # "at a ___ tempo/pace"
    "slow": ["slow", "leisurely", "relaxed", "slow"],
    "medium": ["moderate", "medium", "steady", "moderate"],
    "fast": ["fast", "quick", "brisk", "rapid"],
}

ACCOMPANIMENT_WORDS = {
    "acoustic bass": ["upright bass", "acoustic bass", "double bass"],
    "electric bass": ["electric bass", "bass guitar"],
    "synth bass": ["synth bass", "electronic bass"],
    "tuba": ["tuba", "oom-pah tuba"],
    "piano": ["piano chords", "piano"],
    "electric piano": ["electric piano", "electric piano chords"],
    "jazz guitar": ["jazz guitar chords", "hollow-body guitar"],
    "clean electric guitar": ["clean electric guitar", "choppy guitar chords"],
    "distortion guitar": ["distorted guitars", "crunchy electric guitar", "distorted power chords"],
    "nylon guitar": ["nylon guitar", "classical guitar strumming"],
    "strings": ["strings", "a string section", "lush strings"],
    "accordion": ["accordion", "squeezebox"],
    "brass section": ["brass", "a brass section"],
    "synth pad": ["synth pads", "a warm pad", "ambient pads"],
    "organ": ["organ", "organ chords"],
    "saw synth": ["synth stabs", "buzzy synth chords"],
    "glockenspiel": ["glockenspiel", "bells"],
}

EVENT_PHRASES = {  # participial phrases appended with ", "
    "solo": ["opening with the lead playing alone", "starting with a short unaccompanied intro",
             "beginning alone before the band joins in"],
    "drum fill": ["featuring a quick drum fill", "including a short tom fill", "with a rolling drum fill"],
    "break": ["pausing for a short drum break", "with a brief break where only the drums play",
              "dropping out for a drum break"],
    "crescendo": ["growing louder over time", "building in volume", "steadily swelling"],
    "fade-out": ["fading out at the end", "slowly fading away", "gradually fading out"],
}

# Main-clause templates. {slot} is filled from the lexicon; [ ... ] is an optional segment kept
# with the mention probability of the factors it contains. "a" is fixed to "an" afterwards.
CAPTION_TEMPLATES = [
    "A [{mood} ]{instr} melody plays over {backing}",
    "A [{tempo} ]{piece} with a [{mood} ]{instr} lead[ over {accomp}]",
    "A {instr} plays a [{mood} ]tune[ at a {pace} tempo] over {accomp}",
    "A [{mood} ]{piece} featuring a {instr}[ backed by {accomp}]",
    "Someone plays a [{mood} ]melody on the {instr} over {backing}",
    "The {instr} carries a [{mood} ]melody above {backing}",
    "A [{tempo} ][{mood} ]{piece} led by a {instr}",
    "A [{mood} ]{instr} line floats over {accomp}[ at a {pace} pace]",
    "A band plays a [{tempo} ]{piece} while a {instr} carries the [{mood} ]melody",
    "A [{mood} ]tune is played on a {instr}[, accompanied by {accomp}]",
    "Over {backing}, a {instr} plays a [{mood} ]theme",
    "A {instr} plays a [{mood} ]{piece} with {accomp}[ at a {pace} tempo]",
    "An instrumental [{tempo} ]{piece} where the {instr} plays a [{mood} ]melody",
    "A [{mood} ]melody is played on the {instr}, accompanied by {accomp}",
    "A [{tempo} ][{mood} ]{piece} is played with {accomp} over {backing}",
    "Music with a {mood} feel plays over {backing}[ at a {pace} pace]",
    "A [{mood} ]instrumental piece with {accomp} over {backing}",
    "A [{tempo} ]{piece} plays, with a [{mood} ]{instr} melody on top",
    "A small band plays a [{mood} ]{piece}[ at a {pace} tempo]",
    "A [{mood} ]{instr} melody plays at a {pace} tempo over {accomp}",
    "A [{tempo} ]{piece} in {key} with a [{mood} ]{instr} melody",
    "Instrumental music in which a [{mood} ]{instr} plays over {backing}",
    "A [{mood} ]{instr} tune is backed by {accomp}[ over {backing}]",
    "The band plays a [{tempo} ]{piece} with {accomp}[, and the mood is {mood}]",
]
_FALLBACK_TEMPLATE = "A {instr} plays a melody over {backing} in this short piece of music"

# Which factor each slot mentions.
_SLOT_FACTOR = {
    "mood": "mood", "instr": "instrument", "piece": "genre", "backing": "genre", "tempo": "tempo",
    "pace": "tempo", "accomp": "accompaniment", "key": "key",
}

# ------------------------------------------------------------------------------------------------
# Open-set keyword variants: canonical-ish, synonyms, misspellings.

OS_GENRE = {
    "rock": (["rock"], ["rock-n-roll", "rocknroll", "guitar-rock", "rock-music"], ["rok", "rcok"]),
    "swing jazz": (["jazz", "swing"], ["swing-jazz", "big-band", "jazzy", "swing-music"], ["jaz", "swnig"]),
    "waltz": (["waltz"], ["valse", "3-4", "three-four", "walz"], ["waltzz", "wals"]),
    "bossa nova": (["bossa-nova", "bossanova"], ["bossa", "latin", "brazil", "brazilian"], ["bosa-nova", "bossa-nove"]),
    "techno": (["techno"], ["electronic", "edm", "club", "dance"], ["tecno", "tekno"]),
    "ballad": (["ballad"], ["love-song", "slow-song", "pop-ballad"], ["balad", "ballade"]),
    "march": (["march"], ["marching", "military", "marching-band", "parade"], ["marsch", "martch"]),
    "reggae": (["reggae"], ["jamaica", "one-drop", "dub", "roots"], ["raggae", "regae"]),
}
OS_MOOD = {
    "happy": (["happy"], ["cheerful", "upbeat", "positive", "fun", "joyful"], ["hapy", "happpy"]),
    "sad": (["sad"], ["melancholy", "melancholic", "emotional", "depressing"], ["saad", "melancoly"]),
    "tense": (["tense"], ["suspense", "dark", "horror", "thriller", "tension"], ["suspence", "tence"]),
    "calm": (["calm"], ["relaxing", "chill", "peaceful", "meditation", "ambient"], ["clam", "relaxxing"]),
}
OS_INSTRUMENT = {
    "piano": (["piano"], ["keys", "pianoforte", "grand-piano"], ["paino", "pianno"]),
    "vibraphone": (["vibraphone"], ["vibes", "mallets", "vibraphon"], ["vibrafone", "vibraphne"]),
    "nylon guitar": (["guitar", "nylon-guitar"], ["classical-guitar", "acoustic-guitar", "spanish-guitar"],
                     ["guitare", "gutiar"]),
    "violin": (["violin"], ["fiddle", "strings", "violine"], ["violen", "vilin"]),
    "trumpet": (["trumpet"], ["brass", "horn", "trompete"], ["trumpett", "trumbet"]),
    "alto sax": (["saxophone", "sax"], ["alto-sax", "altosax", "alto-saxophone"], ["saxaphone", "saxofone"]),
    "flute": (["flute"], ["woodwind", "flauta", "flutes"], ["flaute", "flut"]),
    "clarinet": (["clarinet"], ["woodwind", "reed", "klarinette"], ["clarinette", "clarinnet"]),
    "organ": (["organ"], ["hammond", "orgel", "keyboard"], ["orgen", "organn"]),
    "synth lead": (["synth", "synthesizer"], ["synthesiser", "lead-synth", "chiptune", "square-wave"],
                   ["synt", "synthesizor"]),
}
OS_TEMPO = {
    "slow": ["slow", "slow-tempo", "downtempo"],
    "medium": ["mid-tempo", "medium-tempo", "moderate"],
    "fast": ["fast", "uptempo", "fast-tempo"],
}
OS_ACCOMPANIMENT = {
    "acoustic bass": ["double-bass", "upright-bass", "bass"], "electric bass": ["bass", "bass-guitar", "electric-bass"],
    "synth bass": ["synth-bass", "bassline", "bass"], "tuba": ["tuba", "brass"],
    "piano": ["piano", "chords"], "electric piano": ["rhodes", "e-piano", "electric-piano"],
    "jazz guitar": ["jazz-guitar", "guitar"], "clean electric guitar": ["electric-guitar", "guitar", "skank"],
    "distortion guitar": ["distortion", "electric-guitar", "power-chords"], "nylon guitar": ["guitar", "nylon"],
    "strings": ["strings", "orchestral"], "accordion": ["accordion", "musette"], "brass section": ["brass", "horns"],
    "synth pad": ["pad", "pads", "atmosphere"], "organ": ["organ"], "saw synth": ["stabs", "synth"],
    "glockenspiel": ["glockenspiel", "bells"],
}
OS_EXTRA = ["drums", "percussion", "beat", "instrumental", "melody"]
OS_IRRELEVANT = [
    "field-recording", "loop", "my-song", "music", "midi", "demo", "stereo", "sample", "original",
    "composition", "home-studio", "background", "soundtrack", "game", "free", "song", "track", "untitled",
    "wip", "project", "daw", "remix", "cool", "nice", "44khz", "16bit", "wav", "test", "jam", "practice",
    "session", "idea", "royalty-free", "cc0", "video", "youtube", "podcast", "intro", "bgm", "recording",
]

FS_GENRE = {
    "rock": ["rock", "rock", "guitar rock"], "swing jazz": ["swing", "jazz", "swing jazz"],
    "waltz": ["waltz", "waltz", "3/4 waltz"], "bossa nova": ["bossa nova", "bossa", "bossa nova"],
    "techno": ["techno", "techno", "club"], "ballad": ["ballad", "ballad", "slow-dance ballad"],
    "march": ["march", "marching band", "march"], "reggae": ["reggae", "reggae", "one-drop reggae"],
}
FS_INSTRUMENT = {
    "piano": ["piano"], "vibraphone": ["vibraphone", "vibes"], "nylon guitar": ["nylon guitar", "classical guitar"],
    "violin": ["violin"], "trumpet": ["trumpet"], "alto sax": ["alto sax", "saxophone"], "flute": ["flute"],
    "clarinet": ["clarinet"], "organ": ["organ"], "synth lead": ["synth", "square lead synth"],
}
FS_TEMPLATES = [
    "I recorded this [{genre} ]loop[ in {key}][ at {bpm} BPM][ with a {instr} lead][ and {accomp}].",
    "Made this little [{mood} ][{genre} ]track[ in {key}][, {bpm} bpm][, {instr} on top].",
    "A [{genre} ]sketch I wrote[ at {bpm} BPM][ in {key}][; the {instr} carries the tune].",
    "Here is a [{bpm} bpm ][{genre} ]idea[ in {key}][ for {instr}], feel free to use it in your projects.",
    "Another one from my MIDI experiments[: {genre}][, {bpm} BPM][, key of {key}][, {instr} lead].",
    "Quick [{genre} ]demo[ in {key}][ ({bpm} BPM)][, lead played on {instr}][ with {accomp} underneath].",
    "Composed this[ in {key}][ at {bpm} bpm] on my laptop[, a {mood} {genre} piece][ with {instr} and {accomp}].",
    "Uploading a [{mood} ][{genre} ]piece I arranged[ at {bpm} BPM][ in {key}][ for {instr}].",
    "Rendered from MIDI with a General MIDI soundfont[: {genre}][, {key}][, {bpm} BPM][, {instr}].",
    "My attempt at a [{genre} ]groove[ in {key}][ around {bpm} BPM][, {instr} plus {accomp}].",
]

CS_TEMPO_TAG = {"slow": "slow tempo", "medium": "medium tempo", "fast": "fast tempo"}

UPLOADERS = [
    "midi_tinkerer", "loopsmith", "bedroom_composer", "tunecrafter84", "grooveboxer", "soundfontfan",
    "jamdiary", "nightowl_beats", "oldschoolmidi", "melodymaker_07", "studio_attic", "chordcollector",
]


def check_lexicon(genres, moods, instruments, tempo_bins, accompaniment) -> None:
    """Raise AssertionError if a factor value lacks an entry in any of the text tables."""
    tables = [
        (genres, (GENRE_PIECE, GENRE_BACKING, OS_GENRE, FS_GENRE)), (moods, (MOOD_WORDS, OS_MOOD)),
        (instruments, (INSTRUMENT_WORDS, OS_INSTRUMENT, FS_INSTRUMENT)),
        (tempo_bins, (TEMPO_ADJ, TEMPO_PACE, OS_TEMPO, CS_TEMPO_TAG)),
        (accompaniment, (ACCOMPANIMENT_WORDS, OS_ACCOMPANIMENT)),
    ]
    for values, dicts in tables:
        for value in values:
            for table in dicts:
                assert value in table, f"text lexicon lacks {value!r}"


def cs_vocabulary(genres, moods, instruments, tempo_bins, accompaniment) -> tuple[str, ...]:
    """The closed tag set: canonical names of every factor value (deduplicated, in order)."""
    tags = list(genres) + list(moods) + list(instruments) + [CS_TEMPO_TAG[b] for b in tempo_bins] + list(accompaniment)
    return tuple(dict.fromkeys(tags))


# ------------------------------------------------------------------------------------------------
# Generation


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


_ARTICLE_RE = re.compile(r"\b([Aa]) (?=([A-Za-z0-9][\w-]*))")
_CONSONANT_SOUND = ("one", "uni", "use", "eu")  # "a one-drop beat", "a unique", but "an upright"


def _fix_articles(text: str) -> str:
    """Turn "a" into "an" before a vowel sound (and back), e.g. "an upright bass", "an 80 bpm"."""
    def repl(match: re.Match) -> str:
        article, word = match.group(1), match.group(2).lower()
        vowel = (word[0] in "aeiou" and not word.startswith(_CONSONANT_SOUND)) or word[0] == "8" \
            or word in ("11", "18")
        return article + ("n " if vowel else " ")
    return _ARTICLE_RE.sub(repl, text)


def _tidy(text: str, end: str = ".") -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,;.:)])", r"\1", text)
    text = text.replace("( ", "(").replace(",,", ",")
    text = _fix_articles(text)
    text = text[0].upper() + text[1:]
    if end and not text.endswith(end):
        text = text.rstrip(",;: ") + end
    text.encode("ascii")  # every generated text is ASCII; fail loudly otherwise
    return text


def _fill(template: str, values: dict[str, str | None], keep) -> str | None:
    """Expand optional [..] segments (kept when keep(factors) says so and all slots have values)."""
    def optional(match: re.Match) -> str:
        body = match.group(1)
        slots = re.findall(r"\{(\w+)\}", body)
        if any(values.get(s) is None for s in slots):
            return ""
        return body if keep({_SLOT_FACTOR.get(s, s) for s in slots}) else ""

    text = re.sub(r"\[([^\]]*)\]", optional, template)
    slots = re.findall(r"\{(\w+)\}", text)
    if any(values.get(s) is None for s in slots):
        return None
    return text.format(**{s: values[s] for s in slots})


def _caption_values(clip, rng: np.random.Generator) -> dict[str, str | None]:
    accomp = [a for a in clip.accompaniment]
    accomp_words = None
    if accomp:
        size = min(len(accomp), int(rng.integers(1, 3)))
        chosen = [accomp[i] for i in sorted(rng.choice(len(accomp), size=size, replace=False))]
        words = [_pick(rng, ACCOMPANIMENT_WORDS[a]) for a in chosen]
        accomp_words = " and ".join(words)
    return {
        "mood": _pick(rng, MOOD_WORDS[clip.mood]),
        "instr": _pick(rng, INSTRUMENT_WORDS[clip.lead_instrument]),
        "piece": _pick(rng, GENRE_PIECE[clip.genre]),
        "backing": _pick(rng, GENRE_BACKING[clip.genre]),
        "tempo": _pick(rng, TEMPO_ADJ[clip.tempo_bin]),
        "pace": _pick(rng, TEMPO_PACE[clip.tempo_bin]),
        "accomp": accomp_words,
        "key": clip.key,
    }


def make_captions(clip, rng: np.random.Generator, noise: MetadataNoise, n: int = CAPTIONS_PER_CLIP) -> list[str]:
    """`n` distinct Clotho-style captions (one sentence, 8-20 words) of a clip."""
    def keep(factors: set[str]) -> bool:
        return all(rng.random() < noise.caption_mention.get(f, 0.5) for f in factors)

    captions: list[str] = []
    for _ in range(40 * n):
        if len(captions) == n:
            break
        template = _pick(rng, CAPTION_TEMPLATES)
        if "{key}" in template and rng.random() >= noise.caption_mention["key"]:
            continue
        values = _caption_values(clip, rng)
        text = _fill(template, values, keep)
        if text is None:
            continue
        events = [e for e in clip.events]
        if events and rng.random() < noise.caption_mention["event"]:
            text += ", " + _pick(rng, EVENT_PHRASES[_pick(rng, events)])
        caption = _tidy(text)
        if CAPTION_MIN_WORDS <= len(caption.split()) <= CAPTION_MAX_WORDS and caption not in captions:
            captions.append(caption)
    while len(captions) < n:  # practically unreachable; keeps the contract of n captions
        values = _caption_values(clip, rng)
        caption = _tidy(_FALLBACK_TEMPLATE.format(**values))
        if caption in captions:
            extra = f" that is {_pick(rng, TEMPO_ADJ[clip.tempo_bin])} and {_pick(rng, MOOD_WORDS[clip.mood])}"
            caption = _tidy(caption[:-1] + extra)
        captions.append(caption)
    return captions


def make_closed_tags(clip, rng: np.random.Generator, noise: MetadataNoise, vocab) -> list[str]:
    """CS tags: canonical genre, mood, lead instrument, tempo and some accompaniment names."""
    genres, moods, instruments, tempo_bins = vocab
    tags = []
    for value, choices in ((clip.genre, genres), (clip.mood, moods), (clip.lead_instrument, instruments),
                           (clip.tempo_bin, tempo_bins)):
        if rng.random() < noise.cs_drop:
            continue
        if rng.random() < noise.cs_wrong and len(choices) > 1:
            value = _pick(rng, [c for c in choices if c != value])
        tags.append(CS_TEMPO_TAG[value] if value in CS_TEMPO_TAG else value)
    for name in clip.accompaniment:
        if rng.random() < noise.cs_accompaniment and name not in tags:
            tags.append(name)
    return tags


def _os_variant(rng: np.random.Generator, table_entry, noise: MetadataNoise) -> list[str]:
    canonical, synonyms, misspellings = table_entry
    if rng.random() < noise.os_misspell:
        return [_pick(rng, misspellings)]
    if rng.random() < noise.os_synonym:
        out = [_pick(rng, synonyms)]
        if rng.random() < 0.3:
            out.append(_pick(rng, canonical))
        return out
    return [_pick(rng, canonical)]


def _key_tag(clip, rng: np.random.Generator) -> str:
    tonic, family = clip.key.split(" ")
    tonic = tonic.lower()
    form = int(rng.integers(4))
    if form == 0:
        return f"{tonic}-{family}"
    if form == 1:
        return f"{tonic}{family}"
    if form == 2:
        return f"key-{tonic}"
    return f"{tonic}{'m' if family == 'minor' else ''}"


def make_open_tags(clip, rng: np.random.Generator, noise: MetadataNoise, vocab) -> list[str]:
    """OS keywords: noisy Freesound-like tags (at least three)."""
    genres, moods, instruments, _ = vocab
    keep = noise.os_keep
    tags: list[str] = []
    if rng.random() < keep["genre"]:
        tags += _os_variant(rng, OS_GENRE[clip.genre], noise)
    if rng.random() < keep["mood"]:
        tags += _os_variant(rng, OS_MOOD[clip.mood], noise)
    if rng.random() < keep["instrument"]:
        tags += _os_variant(rng, OS_INSTRUMENT[clip.lead_instrument], noise)
    if rng.random() < keep["tempo"]:
        tags.append(_pick(rng, OS_TEMPO[clip.tempo_bin]))
    if rng.random() < keep["bpm"]:
        bpm = int(round(clip.tempo_bpm))
        tags.append(_pick(rng, [f"{bpm}bpm", f"{bpm}bpm", f"{bpm}-bpm", f"bpm{bpm}"]))
    if rng.random() < keep["key"]:
        tags.append(_key_tag(clip, rng))
    for name in clip.accompaniment:
        if rng.random() < keep["accompaniment"]:
            tags.append(_pick(rng, OS_ACCOMPANIMENT[name]))
    if rng.random() < 0.3:
        tags.append(_pick(rng, OS_EXTRA))
    for flag, value, choices, table in ((noise.os_wrong_genre, clip.genre, genres, OS_GENRE),
                                        (noise.os_wrong_mood, clip.mood, moods, OS_MOOD),
                                        (noise.os_wrong_instrument, clip.lead_instrument, instruments, OS_INSTRUMENT)):
        others = [c for c in choices if c != value]
        if others and rng.random() < flag:
            tags.append(_pick(rng, table[_pick(rng, others)][0]))
    n_irrelevant = min(int(rng.poisson(noise.os_irrelevant_mean)), 6)
    tags += [_pick(rng, OS_IRRELEVANT) for _ in range(n_irrelevant)]
    while len(set(tags)) < 3:
        tags.append(_pick(rng, OS_IRRELEVANT))
    tags = list(dict.fromkeys(tags))
    order = rng.permutation(len(tags))
    return [tags[i] for i in order]


def make_description(clip, rng: np.random.Generator, noise: MetadataNoise) -> str:
    """FS: one uploader-style sentence, mostly key and BPM, rarely the mood."""
    accomp = _pick(rng, list(clip.accompaniment)) if clip.accompaniment else None
    values = {
        "genre": _pick(rng, FS_GENRE[clip.genre]) if rng.random() < noise.fs_genre else None,
        "mood": _pick(rng, MOOD_WORDS[clip.mood]) if rng.random() < noise.fs_mood else None,
        "instr": _pick(rng, FS_INSTRUMENT[clip.lead_instrument]) if rng.random() < noise.fs_instrument else None,
        "key": clip.key if rng.random() < noise.fs_key else None,
        "bpm": str(int(round(clip.tempo_bpm))) if rng.random() < noise.fs_bpm else None,
        "accomp": accomp if accomp and rng.random() < noise.fs_accompaniment else None,
    }
    # The {mood} {genre} pair of one template needs both; other optional parts need their own slot.
    text = _fill(_pick(rng, FS_TEMPLATES), values, lambda factors: True)
    assert text is not None  # FS templates have optional slots only
    return _tidy(text, end="")
