import time, json
text = open('/work/shared/data/text/wikitext2-valid-test.txt', encoding='utf-8').read()
docs = [d.split('\n') for d in text.split('\n\n') if d.strip()]
docs = [[l.strip() for l in d if l.strip()] for d in docs]
paras = [' '.join(d) for d in docs]
ref = sum(len(d) for d in docs)
mb = sum(len(p.encode()) for p in paras) / 2**20
import blingfire, pysbd, syntok.segmenter as seg
def bf(p): return [s for s in blingfire.text_to_sentences(p).split('\n') if s.strip()]
_sb = pysbd.Segmenter(language='en', clean=False)
def sb(p): return [s.strip() for s in _sb.segment(p) if s.strip()]
def sy(p):
    out=[]
    for para in seg.process(p):
        for sent in para:
            out.append(''.join(t.spacing + t.value for t in sent).strip())
    return out
for name, f in (('blingfire', bf), ('syntok', sy), ('pysbd', sb)):
    n = len(paras) if name != 'pysbd' else 30
    t = time.perf_counter(); outs = [f(p) for p in paras[:n]]; dt = time.perf_counter() - t
    sub_mb = sum(len(p.encode()) for p in paras[:n]) / 2**20
    exact = sum(len(set(o) & set(d)) for o, d in zip(outs, docs[:n])) / sum(len(d) for d in docs[:n])
    print(json.dumps({'splitter': name, 'MB_per_s': round(sub_mb/dt, 3), 'sentences_recovered_exactly': round(exact, 3), 'docs': n}), flush=True)
