"""The packaged vocabulary of clinical words (pure data): which words name the same structure,
which name several, which body part an image shows, and which words state what the facts never
carry.

Every entry is lower case, American spelling (``medgrit.core.lexicon.SPELLINGS`` maps British
ones), words separated by one space. :mod:`medgrit.core.lexicon` builds its lookups from these
tables; :data:`medgrit.core.lexicon.VOCABULARY_VERSION` names their version in ``dataset.json``.
"""

from __future__ import annotations

# Names of one structure: a text may use any of a group for a region labelled with another.
# A group is ignored in a build whose labels hold two of its names (they are different there).
SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("bladder", "urinary bladder"),
    ("heart", "cardiac silhouette", "cardiac shadow", "cardiac contour"),
    ("optic disc", "optic disk", "optic nerve head", "optic papilla", "disc", "disk"),
    ("optic cup", "physiological cup", "physiologic cup"),
    ("macula", "macular region", "macular area", "macula lutea"),
    ("fovea", "foveal region", "foveal area"),
    ("polyp", "polypoid lesion", "polypoid growth", "polypoid mass", "colonic polyp"),
    ("cyst", "cystic lesion", "cystic structure"),
    ("skin lesion", "cutaneous lesion", "skin tumor"),
    ("spine", "vertebral column", "spinal column", "vertebra", "vertebral body", "backbone"),
    ("body", "body contour", "body outline", "external body contour", "patient body"),
    ("grey matter", "cortical grey matter", "cerebral cortex", "cortex"),
    ("white matter", "cerebral white matter"),
    ("lung", "lung field", "pulmonary field", "lung parenchyma", "pulmonary parenchyma"),
    ("liver", "hepatic parenchyma"),
    ("kidney", "renal parenchyma"),
    ("spleen", "splenic parenchyma"),
    ("gallbladder", "gall bladder"),
    ("colon", "large bowel", "large intestine"),
    ("small bowel", "small intestine"),
    ("prostate", "prostate gland", "prostatic gland"),
    ("thyroid", "thyroid gland"),
    ("adrenal gland", "adrenal"),
    ("inferior vena cava", "vena cava"),
    ("esophagus", "gullet"),
    ("brainstem", "brain stem"),
    ("tumor", "neoplasm", "mass", "malignancy", "cancer", "carcinoma"),
    ("hemorrhage", "hematoma", "bleed"),
    ("stone", "calculus"),
    ("infarct", "infarction"),
    ("metastasis", "metastatic lesion", "secondary deposit"),
    ("nodule", "pulmonary nodule", "lung nodule"),
    ("effusion", "pleural effusion"),
    ("melanoma", "malignant melanoma"),
    ("nevus", "mole", "melanocytic nevus"),
    ("brain", "brain parenchyma", "cerebrum"),
)

# Words that name every region of several structures; with a label of its own a word names that.
# ("lesion" is no broader word: "a lesion is also visible" beside a cyst may be another one.)
BROADER_TERMS: dict[str, tuple[str, ...]] = {
    "brain tissue": ("grey matter", "white matter", "brain"),
    "cerebral tissue": ("grey matter", "white matter", "brain"),
    "cerebral hemisphere": ("grey matter", "white matter", "brain"),
    "hemisphere": ("grey matter", "white matter", "brain"),
    "bowel": ("colon", "small bowel", "duodenum", "rectum", "sigmoid colon"),
    "intestine": ("colon", "small bowel", "duodenum"),
    "vessel": ("aorta", "inferior vena cava", "portal vein", "vessel"),
    "blood vessel": ("aorta", "inferior vena cava", "portal vein", "vessel"),
}  # fmt: skip

# Words for any finding: one names the image's findings (a cyst, a polyp) unless its clause says
# it is another one ("a lesion is also visible", "with a lesion next to it").
GENERIC_FINDINGS: tuple[str, ...] = ("lesion", "abnormality", "finding", "anomaly")
ANOTHER_WORDS: frozenset[str] = frozenset(
    {"also", "another", "additional", "other", "second", "further", "separate", "more",
     "besides", "next", "near", "beside", "alongside", "nearby", "plus"}
)  # fmt: skip

# Findings a text may name; one refers to any region whose label holds the word or one of its
# synonyms ("tumor" is the region "liver tumor").
FINDING_WORDS: tuple[str, ...] = (
    "tumor", "lesion", "mass", "nodule", "fracture", "cyst", "hemorrhage", "effusion", "polyp",
    "metastasis", "calcification", "stone", "calculus", "abscess", "aneurysm", "edema",
    "hematoma", "thrombus", "infarct", "infarction", "ulcer", "melanoma", "nevus", "carcinoma",
    "cancer", "pneumothorax", "consolidation", "opacity", "stenosis", "exudate", "microaneurysm",
    "neoplasm", "malignancy", "adenoma", "glioma", "meningioma", "lymphoma", "metastatic lesion",
    "bleed", "mole", "plaque", "hernia", "atelectasis", "emphysema", "fibrosis", "drusen",
)  # fmt: skip

# Structures a text may name although no label of the build has them: naming one the image
# does not show is an invented structure.
ANATOMY_WORDS: tuple[str, ...] = (
    "liver", "spleen", "pancreas", "stomach", "gallbladder", "kidney", "adrenal gland",
    "urinary bladder", "bladder", "prostate", "uterus", "ovary", "esophagus", "duodenum",
    "small bowel", "small intestine", "large bowel", "large intestine", "colon", "rectum",
    "appendix", "aorta", "inferior vena cava", "vena cava", "portal vein", "heart", "lung",
    "trachea", "bronchus", "thyroid", "thyroid gland", "brain", "cerebellum", "brainstem",
    "hippocampus", "spinal cord", "vertebra", "rib", "femur", "humerus", "sternum", "clavicle",
    "scapula", "skull", "optic disc", "optic cup", "macula", "fovea", "retina", "lymph node",
    "breast", "pleura", "diaphragm", "testis", "pituitary gland", "thalamus", "caudate",
    "putamen", "amygdala", "transverse colon", "sigmoid colon", "ascending colon",
    "descending colon", "ureter", "spine", "psoas", "gallstone", "ventricle", "artery", "vein",
    "muscle", "bone", "pelvic bone", "hip", "iliac bone", "sacrum", "mediastinum", "airway",
    "mucosa", "skin", "eye", "lens", "cornea", "choroid", "retinal vessel", "blood vessel",
    "vessel", "fat", "subcutaneous fat", "fluid", "ventricular system", "corpus callosum",
    "tooth", "jaw", "mandible", "tongue", "larynx", "pharynx", "carotid artery", "body",
    "fold", "mucosal fold", "haustral fold", "hair", "crypt", "villus", "gland", "duct",
    "bile duct", "pancreatic duct", "nerve", "optic nerve", "tendon", "ligament", "cartilage",
    "joint", "meniscus", "sinus", "nasal cavity", "orbit", "globe", "iris", "pupil", "eyelid",
    "lip", "nail", "scalp", "vein", "capillary", "lymphatic", "septum", "valve", "atrium",
    "pericardium", "pulmonary artery", "hilum", "fissure", "lobe", "sulcus", "gyrus",
    "basal ganglia", "cortex", "dura", "skull base", "fat pad", "omentum", "mesentery",
    "peritoneum", "umbilicus", "navel", "placenta", "fetus", "embryo", "gestational sac",
    "follicle", "endometrium", "cervix", "vagina", "penis", "scrotum", "epididymis",
    "seminal vesicle", "renal pelvis", "calyx", "cyst wall", "stool", "feces", "bubble",
    "instrument", "snare", "forceps", "clip", "catheter", "tube", "stent", "wire",
    "pacemaker", "implant", "prosthesis", "marker", "ruler", "ink", "dermoscope",
)  # fmt: skip

# Body regions: the parts of the body an image may be said to show. Where no label of the image
# is named so, a word of this table names no region: it must be one of the body regions the
# image's labels or modality imply ("any": every image).
BODY_REGION_WORDS: dict[str, str] = {
    "head": "head", "cranium": "head", "cranial": "head", "intracranial": "head",
    "neck": "neck", "cervical": "neck",
    "chest": "chest", "thorax": "chest", "thoracic": "chest", "mediastinal": "chest",
    "abdomen": "abdomen", "abdominal": "abdomen", "upper abdomen": "abdomen",
    "lower abdomen": "pelvis", "pelvis": "pelvis", "pelvic": "pelvis",
    "torso": "trunk", "trunk": "trunk",
    "knee": "knee", "hip": "hip", "shoulder": "shoulder", "elbow": "elbow", "wrist": "wrist",
    "ankle": "ankle", "foot": "foot", "hand": "hand", "arm": "limb", "leg": "limb",
    "thigh": "limb", "limb": "limb", "extremity": "limb",
    "eye": "eye", "ocular": "eye", "orbit": "eye", "retina": "eye", "retinal": "eye",
    "ocular fundus": "eye", "posterior pole": "eye",
    "skin": "skin", "skin surface": "skin", "cutaneous": "skin",
    "gastrointestinal tract": "gut", "gi tract": "gut", "lumen": "gut", "mucosa": "gut",
    "colonic mucosa": "gut", "intestinal wall": "gut", "colonic wall": "gut",
    "bowel lumen": "gut", "colonic lumen": "gut", "bowel wall": "gut",
    "brain": "head", "cerebral": "head", "hemisphere": "head", "cerebral hemisphere": "head",
    "colon": "gut", "colonic": "gut", "bowel": "gut", "large bowel": "gut", "intestine": "gut",
    "large intestine": "gut", "intestinal": "gut", "gastrointestinal": "gut",
    "breast": "breast", "body": "any",
}  # fmt: skip

# The body regions each structure implies (by its name's words; sided names drop the side).
# Every region implies "trunk" when it implies chest, abdomen or pelvis.
STRUCTURE_REGIONS: dict[str, tuple[str, ...]] = {
    "brain": ("head",), "grey matter": ("head",), "white matter": ("head",),
    "cerebellum": ("head",), "brainstem": ("head",), "hippocampus": ("head",),
    "thalamus": ("head",), "caudate": ("head",), "putamen": ("head",), "amygdala": ("head",),
    "ventricle": ("head", "chest"), "pituitary gland": ("head",), "skull": ("head",),
    "corpus callosum": ("head",), "glioma": ("head",), "meningioma": ("head",),
    "cerebrospinal fluid": ("head",),
    "thyroid": ("neck",), "larynx": ("neck",), "pharynx": ("neck",), "trachea": ("neck", "chest"),
    "carotid artery": ("neck",),
    "lung": ("chest",), "heart": ("chest",), "bronchus": ("chest",), "pleura": ("chest",),
    "rib": ("chest", "abdomen"), "sternum": ("chest",), "clavicle": ("chest", "shoulder"),
    "scapula": ("chest", "shoulder"), "mediastinum": ("chest",), "breast": ("chest", "breast"),
    "esophagus": ("chest", "neck", "abdomen"), "aorta": ("chest", "abdomen"),
    "diaphragm": ("chest", "abdomen"), "effusion": ("chest",), "pneumothorax": ("chest",),
    "nodule": ("chest",), "consolidation": ("chest",), "atelectasis": ("chest",),
    "liver": ("abdomen",), "spleen": ("abdomen",), "pancreas": ("abdomen",),
    "stomach": ("abdomen",), "gallbladder": ("abdomen",), "kidney": ("abdomen",),
    "adrenal gland": ("abdomen",), "duodenum": ("abdomen",), "small bowel": ("abdomen", "pelvis"),
    "colon": ("abdomen", "pelvis", "gut"), "inferior vena cava": ("abdomen", "chest"),
    "portal vein": ("abdomen",), "psoas": ("abdomen", "pelvis"), "ureter": ("abdomen", "pelvis"),
    "bladder": ("pelvis",), "prostate": ("pelvis",), "uterus": ("pelvis",), "ovary": ("pelvis",),
    "rectum": ("pelvis", "gut"), "sigmoid colon": ("pelvis", "gut"), "sacrum": ("pelvis",),
    "femur": ("pelvis", "hip", "limb", "knee"), "hip": ("pelvis", "hip"),
    "iliac bone": ("pelvis",), "testis": ("pelvis",),
    "spine": ("neck", "chest", "abdomen", "pelvis"), "spinal cord": ("neck", "chest", "abdomen"),
    "vertebra": ("neck", "chest", "abdomen", "pelvis"),
    "humerus": ("shoulder", "limb"),
    "optic disc": ("eye",), "optic cup": ("eye",), "macula": ("eye",), "fovea": ("eye",),
    "retinal vessel": ("eye",), "exudate": ("eye",), "microaneurysm": ("eye",),
    "drusen": ("eye",),
    "skin lesion": ("skin",), "melanoma": ("skin",), "nevus": ("skin",),
    "polyp": ("gut",),
}  # fmt: skip

# The body regions an image of a modality shows whatever its labels.
MODALITY_REGIONS: dict[str, tuple[str, ...]] = {
    "fundus": ("eye",),
    "dermoscopy": ("skin",),
    "endoscopy": ("gut",),
}

# Modality words: an open list, each the modality it names; a word of a modality outside the
# eight medgrit knows names one no image has.
MODALITY_WORDS: dict[str, str] = {
    "ct": "ct", "computed tomography": "ct", "cat scan": "ct", "ct scan": "ct",
    "mri": "mr", "mr": "mr", "magnetic resonance": "mr", "magnetic resonance imaging": "mr",
    "x ray": "xray", "xray": "xray", "radiograph": "xray", "radiography": "xray",
    "radiographic": "xray", "plain film": "xray", "roentgenogram": "xray",
    "pet": "pet", "positron emission tomography": "pet",
    "endoscopy": "endoscopy", "endoscopic": "endoscopy", "colonoscopy": "endoscopy",
    "colonoscopic": "endoscopy", "gastroscopy": "endoscopy", "endoscope": "endoscopy",
    "dermoscopy": "dermoscopy", "dermoscopic": "dermoscopy", "dermatoscopy": "dermoscopy",
    "dermatoscopic": "dermoscopy", "dermoscope": "dermoscopy", "dermatoscope": "dermoscopy",
    "fundus": "fundus", "fundoscopy": "fundus", "funduscopy": "fundus", "fundoscopic": "fundus",
    "funduscopic": "fundus", "fundus photograph": "fundus", "fundus photography": "fundus",
    "retinal photograph": "fundus", "fundus image": "fundus", "fundus camera": "fundus",
    "ultrasound": "ultrasound", "sonography": "ultrasound", "ultrasonography": "ultrasound",
    "sonographic": "ultrasound", "sonogram": "ultrasound", "ultrasonographic": "ultrasound",
    "echography": "ultrasound", "echocardiography": "ultrasound",
    "echocardiogram": "ultrasound",
    "oct": "oct", "optical coherence tomography": "oct", "spect": "spect",
    "scintigraphy": "scintigraphy", "scintigram": "scintigraphy", "mammogram": "mammography",
    "mammography": "mammography", "mammographic": "mammography", "angiogram": "angiography",
    "angiography": "angiography", "angiographic": "angiography", "fluoroscopy": "fluoroscopy",
    "fluoroscopic": "fluoroscopy", "histology": "microscopy", "histopathology": "microscopy",
    "histological": "microscopy", "microscopy": "microscopy", "microscopic": "microscopy",
    "cbct": "ct", "cone beam": "ct", "tomosynthesis": "tomosynthesis",
    "thermography": "thermography", "elastography": "elastography", "doppler": "doppler",
    "fmri": "fmri", "nuclear medicine": "scintigraphy",
}  # fmt: skip

# Sequence, phase, window and tracer words: one is true only of an image whose recorded
# sequence makes it so (``medgrit.core.sequences``); the facts record no phase, window or tracer.
SEQUENCE_WORDS: tuple[str, ...] = (
    "t1", "t2", "t1 weighted", "t2 weighted", "t1w", "t2w", "flair", "dwi", "diffusion weighted",
    "adc", "swi", "proton density", "contrast enhanced", "post contrast", "postcontrast",
    "gadolinium", "non contrast", "noncontrast", "unenhanced", "susceptibility weighted",
    "t1 contrast", "t1 contrast enhanced", "t1 post contrast", "t1ce", "t1gd", "t1c", "t1 gd",
    "t1 ce", "t1 c", "t1post", "t2 flair", "pre contrast", "precontrast", "gadolinium enhanced",
    "post gadolinium", "apparent diffusion coefficient", "pd weighted", "arterial phase",
    "venous phase", "portal venous phase", "delayed phase", "bone window", "lung window",
    "soft tissue window", "mip", "maximum intensity projection", "fdg", "tracer", "radiotracer",
    "stir", "gre", "perfusion", "inversion recovery", "fat suppressed", "fat saturated",
)  # fmt: skip

# Words that state appearance, a diagnosis or a measurement: the facts carry none of them.
UNSUPPORTED_WORDS: tuple[str, ...] = (
    "surface", "texture", "textured", "color", "colored", "colour", "pigment", "pigmented",
    "pigmentation", "enhancement", "enhancing", "enhanced", "density", "dense",
    "hyperdense", "hypodense", "isodense", "attenuation", "hyperattenuating",
    "hypoattenuating", "intensity", "hyperintense", "hypointense", "isointense", "signal",
    "bright", "brighter", "dark", "darker", "echogenic", "hyperechoic", "hypoechoic",
    "anechoic", "isoechoic", "echotexture", "ulcerated", "ulceration", "calcified", "necrotic",
    "necrosis", "heterogeneous", "heterogeneously", "homogeneous", "homogeneously",
    "irregular", "irregularly", "smooth", "lobulated", "spiculated", "margin", "margins",
    "well defined", "ill defined", "well circumscribed", "circumscribed", "poorly defined",
    "sharply", "blurred", "round", "rounded", "oval", "ovoid", "elongated", "shape", "shaped",
    "sessile", "pedunculated", "flat", "raised", "elevated", "inflamed", "inflammation",
    "inflammatory", "erythema", "erythematous", "bleeding", "hemorrhagic", "edematous",
    "swollen", "enlarged", "enlargement", "atrophic", "atrophy", "thickened", "thickening",
    "benign", "malignant", "suspicious", "normal", "normally", "abnormal", "unremarkable",
    "healthy", "pathological", "diseased", "mild", "mildly", "severe", "severely", "dilated",
    "dilatation", "veil", "globule", "globules", "dot", "dots", "dotted", "streak", "streaks",
    "reticular", "globular", "asymmetric", "asymmetry", "symmetric", "symmetrical", "uniform",
    "mottled", "solid", "fluid filled", "air filled", "metabolic", "hypermetabolic", "uptake",
    "avid", "suv", "opaque", "lucent", "radiolucent", "radiopaque", "cupping", "pallor",
    "excavation", "hue", "pink", "pinkish", "red", "reddish", "brown", "brownish", "black",
    "blue", "white", "whitish", "yellow", "yellowish", "grey", "greyish", "orange", "purple",
    "tan", "mm", "cm", "millimeter", "millimeters", "centimeter", "centimeters", "diameter",
    "measuring", "measures", "atypical", "typical", "vascular", "vascularity",
    "vascularized", "hypervascular", "hypovascular", "perfused", "granular", "nodular",
    "cystic", "fatty", "sclerotic", "lytic", "diagnosis", "diagnostic", "consistent",
    "suggestive", "suggests", "indicative", "likely", "probably", "possibly", "stage",
    "grade", "infiltrating", "infiltrative", "invasive", "invading", "compressing",
    "compression", "displacing", "displaced", "obstructing", "obstruction", "contrast",
    "glistening", "shiny", "friable", "wavy", "crisp", "sharp", "clear", "pale", "dull",
    "faint", "hazy", "cloudy", "translucent", "transparent", "bulging", "collapsed", "aerated",
    "thin", "thick", "prominent", "subtle", "conspicuous", "vivid", "mottling", "speckled",
    "scarred", "scar", "crusted", "scaly", "keratotic", "diffusion", "restricted", "lucency",
    "lucencies", "opacification", "activity", "avidity", "shadowing", "acoustic", "calcific",
    "sclerosis", "increased", "decreased", "reduced", "intense", "heterogeneity", "homogeneity",
    "texture", "striated", "trabecular", "blurry", "sharpness", "contour", "thickness",
)  # fmt: skip

# Endings and beginnings of words of appearance the list above may miss ("photopenic",
# "hypoattenuating", "isoechoic"): a plain word with one states what no fact records.
APPEARANCE_PREFIXES: tuple[str, ...] = ("hyper", "hypo", "iso", "photo")
APPEARANCE_SUFFIXES: tuple[str, ...] = (
    "dense", "density", "densities", "intense", "intensity", "intensities", "echoic", "echogenic",
    "echogenicity", "lucent", "lucency", "penic", "attenuating", "attenuation", "metabolic",
    "vascular", "vascularity", "vascularized", "enhancing", "enhancement", "opaque", "cystic",
    "necrotic", "edematous", "pigmented", "ulcerated", "calcified", "sclerotic", "avid",
)  # fmt: skip

# Words before a name that say it is one more of its kind ("a second polyp", "a satellite
# lesion"): the image must have two regions of it.
MORE_WORDS: frozenset[str] = frozenset(
    {"second", "another", "additional", "other", "satellite", "further", "separate", "third",
     "extra"}
)  # fmt: skip
