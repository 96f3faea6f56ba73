// Incremental CTC prefix beam search with word-level KenLM and hotwords, compiled.
//
// The same search as engine/decoder/beam_search.py (the reference, built on pyctcdecode's
// scoring): beams carried from chunk to chunk, candidates merged by text, scored by
// the LM once per new word and by the open-vocabulary partial-word check, pruned and
// trimmed. Texts and words in progress are interned per utterance (a text is a node:
// its parent text plus one word), so merging compares integers and each distinct
// text is scored once, as the reference's cache does. The frame loop holds no Python
// object and releases the GIL, so streams decode in parallel threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "lm/model.hh"
#include "lm/virtual_interface.hh"

namespace py = pybind11;

namespace {

// How a token moves a beam; the Python side classifies tokens (engine/decoder/beam_search.py).
enum Kind : int { BLANK = 0, DELIMITER = 1, WORD_START = 2, PIECE = 3 };

// Python's len() of UTF-8 text: the partial-word scores count characters, not bytes.
size_t code_points(const std::string &s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Every prefix of `word` that ends on a character boundary, the whole word included.
template <class F> void for_each_prefix(const std::string &word, F f) {
  for (size_t i = 1; i <= word.size(); ++i)
    if (i == word.size() || (static_cast<unsigned char>(word[i]) & 0xC0) != 0x80) f(word.substr(0, i));
}

// pyctcdecode's _sum_log_scores, with the same operations (so the same floats).
double sum_log_scores(double s1, double s2) {
  return s1 >= s2 ? s1 + std::log(1 + std::exp(s2 - s1)) : s2 + std::log(1 + std::exp(s1 - s2));
}

struct Constants {
  double token_min_logp, beam_prune_logp, unk_offset, log_base_change, avg_token_len, log_clip;
  double blank_skip_logp;  // a frame whose blank reaches this only extends every beam by it (inf: never)
};

// The known words (the unigram list, as far as the LM knows them) as a byte trie: a word in
// progress is a known word's start exactly when it is a node, so each new word in progress
// costs one step from the node of the part it grew from, not a lookup among all prefixes.
class WordTrie {
 public:
  static constexpr int ROOT = 0, NONE = -1;

  void build(std::vector<std::pair<std::string, lm::WordIndex>> words) {
    std::sort(words.begin(), words.end());
    std::vector<std::vector<std::pair<unsigned char, int>>> children(1);
    std::vector<int64_t> word(1, -1);
    for (const auto &[w, index] : words) {
      int node = ROOT;
      for (unsigned char c : w) {
        auto &edges = children[node];
        if (edges.empty() || edges.back().first != c) {  // sorted input: a new edge is the last one
          edges.emplace_back(c, static_cast<int>(children.size()));
          children.emplace_back();
          word.push_back(-1);
        }
        node = children[node].back().second;
      }
      word[node] = index;
    }
    first_.assign(1, 0);
    for (const auto &edges : children) {
      for (const auto &[c, child] : edges) label_.push_back(c), target_.push_back(child);
      first_.push_back(static_cast<int>(label_.size()));
    }
    word_ = std::move(word);
  }

  bool empty() const { return label_.empty(); }

  // The node reached from `node` by `text`'s bytes, NONE off the trie.
  int step(int node, const std::string &text) const {
    for (unsigned char c : text) {
      if (node == NONE) return NONE;
      int lo = first_[node], hi = first_[node + 1], next = NONE;
      for (int e = lo; e < hi; ++e)
        if (label_[e] == c) {
          next = target_[e];
          break;
        }
      node = next;
    }
    return node;
  }

  int64_t word(int node) const { return node == NONE ? -1 : word_[node]; }  // the word's LM index, -1 if none

 private:
  // Unbuilt (no LM): the root alone, so a step from it is NONE, never a read past the end.
  std::vector<int> first_{0, 0}, target_;
  std::vector<unsigned char> label_;
  std::vector<int64_t> word_{-1};
};

// What every stream shares: the vocabulary, the LM and its known words. Immutable.
class Decoder {
 public:
  Decoder(std::vector<int> kinds, std::vector<std::string> texts, const std::string &lm_path,
          const std::vector<std::string> &unigrams, Constants c)
      : kinds_(std::move(kinds)), texts_(std::move(texts)), c_(c) {
    if (kinds_.size() != texts_.size()) throw std::invalid_argument("kinds and texts differ in length");
    // With one character per token and no word-start pieces, a word in progress has one spelling:
    // each is made once, by its parent and token, and needs no lookup by text.
    one_spelling_ = true;
    blank_ = static_cast<int>(std::find(kinds_.begin(), kinds_.end(), BLANK) - kinds_.begin());
    if (blank_ == static_cast<int>(kinds_.size())) throw std::invalid_argument("the vocabulary has no blank");
    for (size_t t = 0; t < kinds_.size(); ++t)
      if (kinds_[t] == WORD_START || (kinds_[t] == PIECE && code_points(texts_[t]) != 1)) one_spelling_ = false;
    if (lm_path.empty()) return;
    lm::ngram::Config config;
    config.load_method = util::POPULATE_OR_READ;
    lm_.reset(lm::ngram::LoadVirtual(lm_path.c_str(), config));
    std::vector<std::pair<std::string, lm::WordIndex>> known;
    std::unordered_set<std::string> seen;
    for (const std::string &w : unigrams) {
      lm::WordIndex index = lm_->BaseVocabulary().Index(w);
      if (index != 0 && !w.empty() && seen.insert(w).second) known.emplace_back(w, index);  // pyctcdecode keeps
    }                                                                                     // what the LM knows
    known_.build(std::move(known));
  }

  bool has_lm() const { return static_cast<bool>(lm_); }
  size_t vocab_size() const { return kinds_.size(); }
  int kind(int token) const { return kinds_[token]; }
  const std::string &text(int token) const { return texts_[token]; }
  const Constants &constants() const { return c_; }
  const WordTrie &known() const { return known_; }
  bool one_spelling() const { return one_spelling_; }
  int blank() const { return blank_; }

  // A word as the LM sees it (`node`: its node in the known-word trie): its index, and whether
  // pyctcdecode's LanguageModel.score calls it unknown (not a known word, or not in the LM at all).
  std::pair<lm::WordIndex, bool> lookup(const std::string &word, int node) const {
    int64_t known = known_.word(node);
    if (known >= 0) return {static_cast<lm::WordIndex>(known), false};
    lm::WordIndex index = lm_->BaseVocabulary().Index(word);
    return {index, !known_.empty() || index == 0};
  }

  // pyctcdecode's LanguageModel.score: log10 -> natural log, weighted, plus the word bonus.
  double score(const lm::ngram::State &in, std::pair<lm::WordIndex, bool> word, bool eos, double alpha,
               double beta, lm::ngram::State *out) const {
    double s = lm_->BaseScore(&in, word.first, out);
    if (word.second) s += c_.unk_offset;
    if (eos) {
      lm::ngram::State end;
      s = s + static_cast<double>(lm_->BaseScore(out, lm_->BaseVocabulary().EndSentence(), &end));
    }
    return alpha * s * c_.log_base_change + beta;
  }

  void start_state(lm::ngram::State *state) const { lm_->BeginSentenceWrite(state); }

 private:
  std::vector<int> kinds_;
  std::vector<std::string> texts_;
  Constants c_;
  std::unique_ptr<lm::base::Model> lm_;
  WordTrie known_;
  bool one_spelling_;
  int blank_;
};

struct TextNode {
  int parent, word;  // word: a part id (the root has neither)
  int hotwords;      // how many of the text's words are hotwords
  double raw;        // the text's LM score
  double score;      // raw plus the hotword bonus
  lm::ngram::State state;
};

struct Beam {
  int text, part, last;  // last: the token that made it (-1: none yet)
  int frames;            // the completed words' frames: the newest one's index in the arena (-1: none)
  int part_start, part_end;
  double logit;
};

struct Key {
  int text, part, last;
  bool operator==(const Key &o) const { return text == o.text && part == o.part && last == o.last; }
};
struct KeyHash {
  size_t operator()(const Key &k) const {
    uint64_t h = (static_cast<uint64_t>(static_cast<uint32_t>(k.text)) << 32) ^ static_cast<uint32_t>(k.part);
    h ^= static_cast<uint64_t>(k.last + 1) * 0x9E3779B97F4A7C15ULL;
    h ^= h >> 31, h *= 0xBF58476D1CE4E5B9ULL, h ^= h >> 29;  // mixed: the table masks low bits
    return static_cast<size_t>(h);
  }
};

// A candidate: a beam whose completed word's frames are not yet in the arena (most
// candidates are merged or pruned away), and the text and word it closed.
struct Candidate {
  Beam beam;
  int done_start, done_end;  // done_start == -2: closes no word
  int prev_text, word;       // the text before the closed word, and the word (part 0: none)
  Key key() const { return Key{beam.text, beam.part, beam.last}; }
};

struct Frame {
  int start, end, prev;
};

// (int, int) -> int, open addressing: the per-candidate lookups (a word in progress grown by a
// token, a text grown by a word) stay in one contiguous table instead of a node per entry.
class PairMap {
 public:
  PairMap() : keys_(1024, EMPTY), values_(1024) {}

  // The value for (a, b), inserting make() if absent.
  template <class F> int get(int a, int b, F make) {
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    size_t i = slot(key);
    if (keys_[i] == key) return values_[i];
    const int value = make();  // may insert into other maps, never this one
    if (2 * (size_ + 1) > keys_.size()) {
      grow();
      i = slot(key);
    }
    keys_[i] = key, values_[i] = value, ++size_;
    return value;
  }

 private:
  static constexpr uint64_t EMPTY = ~0ULL;

  size_t slot(uint64_t key) const {
    uint64_t h = key;
    h ^= h >> 33, h *= 0xFF51AFD7ED558CCDULL, h ^= h >> 33;
    size_t i = h & (keys_.size() - 1);
    while (keys_[i] != EMPTY && keys_[i] != key) i = (i + 1) & (keys_.size() - 1);
    return i;
  }

  void grow() {
    std::vector<uint64_t> keys(keys_.size() * 2, EMPTY);
    std::vector<int> values(keys.size());
    keys.swap(keys_), values.swap(values_);
    for (size_t j = 0; j < keys.size(); ++j)
      if (keys[j] != EMPTY) {
        size_t i = slot(keys[j]);
        keys_[i] = keys[j], values_[i] = values[j];
      }
  }

  std::vector<uint64_t> keys_;
  std::vector<int> values_;
  size_t size_ = 0;
};

// (word, first frame, last frame + 1, confidence: the mean of its frames' best-token probabilities)
using Words = std::vector<std::tuple<std::string, int, int, double>>;
using Frames = py::array_t<float, py::array::c_style | py::array::forcecast>;
constexpr int NO_WORD = -2;

// One utterance: beams, interned texts and words in progress, score caches. One thread at a time.
class Utterance {
 public:
  Utterance(std::shared_ptr<const Decoder> d, int beam_width, double alpha, double beta, bool use_lm,
            const std::vector<std::string> &hotwords, double hotword_weight)
      : d_(std::move(d)), width_(beam_width), alpha_(alpha), beta_(beta), lm_(use_lm && d_->has_lm()),
        hot_weight_(hotword_weight) {
    if (beam_width < 1) throw std::invalid_argument("beam width must be at least 1");
    for (const std::string &w : hotwords) {
      hot_.insert(w);
      size_t n = code_points(w);
      for_each_prefix(w, [&](std::string p) {
        auto it = hot_prefix_.find(p);
        if (it == hot_prefix_.end() || it->second > n) hot_prefix_[std::move(p)] = n;
      });
    }
    parts_.reserve(1024), part_info_.reserve(1024), nodes_.reserve(256), frames_.reserve(1024);
    intern("", WordTrie::ROOT);
    TextNode root{-1, -1, 0, 0.0, 0.0, {}};
    if (lm_) d_->start_state(&root.state);
    nodes_.push_back(root);
    beams_.push_back(Beam{0, 0, -1, -1, -1, -1, 0.0});
  }

  // Consumes the utterance's next (T, V) log-probabilities.
  void advance(const Frames &logprobs) {
    check(logprobs);
    py::gil_scoped_release release;
    advance(logprobs.data(), static_cast<int>(logprobs.shape(0)));
  }

  void check(const Frames &logprobs) const {
    if (logprobs.ndim() != 2 || static_cast<size_t>(logprobs.shape(1)) != d_->vocab_size())
      throw std::invalid_argument("log-probabilities must be (frames, vocabulary size)");
    // NaN compares false everywhere: it would empty the beams. -inf (a model's log 0) is clipped.
    const float *p = logprobs.data();
    for (py::ssize_t i = 0, n = logprobs.size(); i < n; ++i)
      if (std::isnan(p[i]) || p[i] == std::numeric_limits<float>::infinity())
        throw std::invalid_argument("log-probabilities hold NaN or +inf");
  }

  // The frame loop: no Python object is touched.
  void advance(const float *data, int frames) {
    const int vocab = static_cast<int>(d_->vocab_size());
    const float clip = static_cast<float>(d_->constants().log_clip);  // as numpy clips float32 by a float
    column_.resize(vocab);
    for (int i = 0; i < frames; ++i) {
      const float *raw = data + static_cast<size_t>(i) * vocab;
      float best = raw[0];
      for (int v = 0; v < vocab; ++v) {
        best = std::max(best, raw[v]);
        column_[v] = std::min(std::max(raw[v], clip), 0.0f);
      }
      cum_probs_.push_back(cum_probs_.back() + std::exp(static_cast<double>(best)));
      step(column_.data(), vocab, static_cast<int>(cum_probs_.size()) - 2);
    }
  }

  // The best beam's words, the word in progress included.
  Words best() const {
    const Beam &b = beams_[0];
    Words out = words(b.text, b.frames);
    if (b.part) out.emplace_back(parts_[b.part], b.part_start, b.part_end, confidence(b.part_start, b.part_end));
    return out;
  }

  // What an interim result shows, in one call: the best text, its confidence, stability.
  std::tuple<std::string, double, double> interim() const {
    const Words w = best();
    std::string text;
    double confidence = 0;
    for (const auto &[word, start, end, c] : w) {
      if (!text.empty()) text += ' ';
      text += word;
      confidence += c;
    }
    return {text, w.empty() ? 0.0 : confidence / w.size(), stability()};
  }

  // The share of acoustic probability on beams whose completed words agree with the best beam's.
  double stability() const {
    double top = beams_[0].logit;
    for (const Beam &b : beams_) top = std::max(top, b.logit);
    double agree = 0, all = 0;
    for (const Beam &b : beams_) {
      double w = std::exp(b.logit - top);
      all += w;
      if (b.text == beams_[0].text) agree += w;
    }
    return agree / all;
  }

  // End of utterance: open words closed, end-of-sentence LM scores, the n best (with their
  // total scores), best first.
  std::vector<std::pair<Words, double>> finish(int n) {
    std::vector<std::pair<Words, double>> out;
    {
      py::gil_scoped_release release;
      candidates_.clear();
      for (const Beam &b : beams_) {
        Candidate c = close(b);
        c.beam.last = -1;
        c.beam.part_start = c.beam.part_end = -1;
        candidates_.push_back(c);
      }
      merge();
      totals_.resize(merged_.size());
      for (size_t i = 0; i < merged_.size(); ++i) {
        const Candidate &c = candidates_[merged_[i].candidate];
        const TextNode &prev = nodes_[c.prev_text];
        double s = 0.0;
        if (lm_) {
          lm::ngram::State end;
          s = d_->score(prev.state, word(c.word), true, alpha_, beta_, &end);
        }
        totals_[i] = merged_[i].logit + (prev.raw + s + hot_weight_ * nodes_[c.beam.text].hotwords);
      }
      for (const auto &[total, i] : top(n)) {
        const Candidate &c = candidates_[merged_[i].candidate];
        const int frames = c.done_start == NO_WORD ? c.beam.frames : push_frame(c.done_start, c.done_end, c.beam.frames);
        out.emplace_back(words(c.beam.text, frames), total);
      }
    }
    return out;
  }

 private:
  void step(const float *col, int vocab, int t) {
    const Constants &k = d_->constants();
    const int blank = d_->blank();
    if (static_cast<double>(col[blank]) >= k.blank_skip_logp) {  // blank dominates: nothing else moves
      for (Beam &b : beams_) b.logit += col[blank], b.last = blank;
      return;
    }
    int argmax = 0;
    for (int i = 1; i < vocab; ++i)
      if (col[i] > col[argmax]) argmax = i;
    candidates_.clear();
    for (int idx = 0; idx < vocab; ++idx) {
      if (!(col[idx] >= k.token_min_logp) && idx != argmax) continue;
      const double p = col[idx];
      const int kind = d_->kind(idx);
      for (const Beam &b : beams_) {
        Candidate &c = kind == BLANK || b.last == idx || kind == PIECE
                           ? candidates_.emplace_back(Candidate{b, NO_WORD, NO_WORD, b.text, 0})
                           : candidates_.emplace_back(close(b));  // a word ends (and another may begin)
        c.beam.logit = b.logit + p;
        c.beam.last = idx;
        if (kind == BLANK || b.last == idx) {  // same text
          if (kind != BLANK) c.beam.part_end = t + 1;
        } else if (kind == DELIMITER || kind == WORD_START) {
          if (kind == WORD_START) {
            c.beam.part = begin_word(idx);
            c.beam.part_start = t, c.beam.part_end = t + 1;
          } else {
            c.beam.part_start = c.beam.part_end = -1;
          }
        } else {
          c.beam.part = append(b.part, idx);
          c.beam.part_start = b.part_start < 0 ? t : b.part_start;
          c.beam.part_end = t + 1;
        }
      }
    }
    merge();
    totals_.resize(merged_.size());
    for (size_t i = 0; i < merged_.size(); ++i) {
      const Beam &b = candidates_[merged_[i].candidate].beam;
      double lm_score = nodes_[b.text].score;
      if (b.part) lm_score += partial_score(b.part);
      totals_[i] = merged_[i].logit + lm_score;
    }
    const auto &kept = top(width_);
    beams_.clear();
    for (const auto &[total, i] : kept) {
      const Candidate &c = candidates_[merged_[i].candidate];
      Beam &b = beams_.emplace_back(c.beam);
      b.logit = merged_[i].logit;
      if (c.done_start != NO_WORD) b.frames = push_frame(c.done_start, c.done_end, c.beam.frames);
    }
  }

  // The beam with its word in progress completed: the text gains it, the part empties.
  Candidate close(const Beam &b) {
    Candidate c{b, NO_WORD, NO_WORD, b.text, b.part};
    if (b.part) {
      c.beam.text = child(b.text, b.part);
      c.done_start = b.part_start, c.done_end = b.part_end;
    }
    c.beam.part = 0;
    return c;
  }

  // pyctcdecode's merge of beams with the same text, keeping the more probable one's frames.
  void merge() {
    merged_.clear();
    size_t size = 16;
    while (size < 2 * candidates_.size()) size *= 2;
    slots_.assign(size, -1);  // open addressing: indices into merged_, no allocation per frame
    for (int j = 0; j < static_cast<int>(candidates_.size()); ++j) {
      const Candidate &c = candidates_[j];
      const Key key = c.key();
      size_t i = KeyHash()(key) & (size - 1);
      while (slots_[i] >= 0 && !(candidates_[merged_[slots_[i]].candidate].key() == key)) i = (i + 1) & (size - 1);
      if (slots_[i] < 0) {
        slots_[i] = static_cast<int>(merged_.size());
        merged_.push_back(Merged{j, c.beam.logit});
        continue;
      }
      Merged &kept = merged_[slots_[i]];
      const double sum = sum_log_scores(kept.logit, c.beam.logit);
      if (c.beam.logit > kept.logit) kept.candidate = j;  // its frames; the probability is the sum
      kept.logit = sum;
    }
  }

  // Indices of merged_ within the prune margin of the best, the n highest totals_ first (ties: first seen).
  const std::vector<std::pair<double, int>> &top(int n) {
    const double floor = *std::max_element(totals_.begin(), totals_.end()) + d_->constants().beam_prune_logp;
    order_.clear();
    for (size_t i = 0; i < totals_.size(); ++i)
      if (totals_[i] >= floor) order_.emplace_back(totals_[i], static_cast<int>(i));
    auto better = [](const auto &a, const auto &b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    if (static_cast<int>(order_.size()) > n) {
      std::nth_element(order_.begin(), order_.begin() + n, order_.end(), better);
      order_.resize(n);
    }
    std::sort(order_.begin(), order_.end(), better);
    return order_;
  }

  // The word in progress: a hotword's start earns its share of the bonus; with an LM, a part that
  // starts no known word costs the unknown-word offset, more past the average word length.
  double partial_score(int part) {
    double &cached = part_info_[part].partial;
    if (!std::isnan(cached)) return cached;
    const std::string &text = parts_[part];
    const Constants &k = d_->constants();
    const double len = static_cast<double>(code_points(text));
    auto hot = hot_prefix_.empty() ? hot_prefix_.end() : hot_prefix_.find(text);
    if (hot != hot_prefix_.end()) {
      cached = hot_weight_ * len / static_cast<double>(hot->second);
    } else if (!lm_ || part_info_[part].node != WordTrie::NONE) {
      cached = 0.0;
    } else {
      cached = k.unk_offset * (len > k.avg_token_len ? len / k.avg_token_len : 1);
    }
    return cached;
  }

  // The id of a word in progress; `node`: its node in the known-word trie.
  int intern(std::string text, int node) {
    const int id = static_cast<int>(parts_.size());
    if (!d_->one_spelling()) {
      auto [it, added] = part_ids_.try_emplace(text, id);
      if (!added) return it->second;
    }
    parts_.push_back(std::move(text));
    part_info_.push_back(PartInfo{std::nan(""), -1, node, 0, false, false});
    return id;
  }

  int append(int part, int token) {
    return appended_.get(part, token, [&] {
      const std::string &piece = d_->text(token);
      return intern(parts_[part] + piece, d_->known().step(part_info_[part].node, piece));
    });
  }

  int begin_word(int token) {
    const std::string &piece = d_->text(token);
    return intern(piece, d_->known().step(WordTrie::ROOT, piece));
  }

  // The word as the LM sees it, looked up when it first completes a text.
  std::pair<lm::WordIndex, bool> word(int part) {
    PartInfo &info = part_info_[part];
    if (!info.looked_up) std::tie(info.index, info.unknown) = d_->lookup(parts_[part], info.node), info.looked_up = true;
    return {info.index, info.unknown};
  }

  int is_hotword(int part) {
    PartInfo &info = part_info_[part];
    if (info.hotword < 0) info.hotword = !hot_.empty() && hot_.count(parts_[part]);
    return info.hotword;
  }

  // The text `text` followed by the word `part`, scored by the LM when first seen.
  int child(int text, int part) {
    return children_.get(text, part, [&] {
      const TextNode &parent = nodes_[text];
      TextNode node{text, part, parent.hotwords + is_hotword(part), 0.0, 0.0, {}};
      double s = 0.0;
      if (lm_) s = d_->score(parent.state, word(part), false, alpha_, beta_, &node.state);
      node.raw = parent.raw + s;
      node.score = node.raw + hot_weight_ * node.hotwords;
      nodes_.push_back(node);
      return static_cast<int>(nodes_.size()) - 1;
    });
  }

  int push_frame(int start, int end, int prev) {
    frames_.push_back(Frame{start, end, prev});
    return static_cast<int>(frames_.size()) - 1;
  }

  double confidence(int start, int end) const {
    end = std::max(end, start + 1);
    return (cum_probs_[end] - cum_probs_[start]) / (end - start);
  }

  Words words(int text, int frames) const {
    std::vector<int> parts;
    for (int n = text; n > 0; n = nodes_[n].parent) parts.push_back(nodes_[n].word);
    std::vector<const Frame *> spans;
    for (int f = frames; f >= 0; f = frames_[f].prev) spans.push_back(&frames_[f]);
    Words out;
    const size_t n = std::min(parts.size(), spans.size());
    for (size_t i = 0; i < n; ++i) {
      const Frame *span = spans[spans.size() - 1 - i];
      out.emplace_back(parts_[parts[parts.size() - 1 - i]], span->start, span->end, confidence(span->start, span->end));
    }
    return out;
  }

  std::shared_ptr<const Decoder> d_;
  int width_;
  double alpha_, beta_;
  bool lm_;
  double hot_weight_;
  std::unordered_set<std::string> hot_;
  std::unordered_map<std::string, size_t> hot_prefix_;  // prefix -> shortest hotword it starts
  std::vector<std::string> parts_;
  struct PartInfo {  // what a word in progress needs, each computed when first needed
    double partial;  // its score as a word in progress (NaN: not yet)
    int hotword;     // 1 if it is a hotword (-1: not yet)
    int node;        // in the known-word trie
    lm::WordIndex index;
    bool unknown, looked_up;
  };
  std::vector<PartInfo> part_info_;
  std::unordered_map<std::string, int> part_ids_;
  PairMap appended_, children_;
  std::vector<TextNode> nodes_;
  std::vector<Frame> frames_;
  std::vector<Beam> beams_;
  struct Merged {
    int candidate;  // the more probable of the candidates merged: its frames are kept
    double logit;   // all of theirs, summed
  };
  std::vector<Candidate> candidates_;
  std::vector<Merged> merged_;
  std::vector<double> totals_;
  std::vector<float> column_;  // a frame's clipped log-probabilities
  std::vector<double> cum_probs_{0.0};  // running sum of each frame's best-token probability
  std::vector<std::pair<double, int>> order_;
  std::vector<int> slots_;
};

// Each utterance advanced by its own log-probabilities, on up to `threads` threads at once
// (sherpa-onnx's shape: a model batch's streams decoded together), the GIL released once.
void advance_many(const std::vector<Utterance *> &utterances, const std::vector<Frames> &logprobs, int threads) {
  if (utterances.size() != logprobs.size()) throw std::invalid_argument("one array of log-probabilities per utterance");
  for (size_t i = 0; i < utterances.size(); ++i) {
    utterances[i]->check(logprobs[i]);
    for (size_t j = 0; j < i; ++j)
      if (utterances[j] == utterances[i]) throw std::invalid_argument("an utterance appears twice");
  }
  py::gil_scoped_release release;
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_lock;
  auto work = [&] {
    for (size_t i; (i = next++) < utterances.size();) {
      try {
        utterances[i]->advance(logprobs[i].data(), static_cast<int>(logprobs[i].shape(0)));
      } catch (...) {
        std::lock_guard<std::mutex> guard(failure_lock);
        if (!failure) failure = std::current_exception();
      }
    }
  };
  const size_t n = std::min(utterances.size(), static_cast<size_t>(std::max(threads, 1)));
  std::vector<std::thread> pool;
  for (size_t t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (std::thread &t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace

PYBIND11_MODULE(_beam_search, m) {
  m.doc() = "Compiled incremental CTC prefix beam search (see engine/decoder/native/beam_search.cpp)";
  py::class_<Decoder, std::shared_ptr<Decoder>>(m, "Decoder")
      .def(py::init([](std::vector<int> kinds, std::vector<std::string> texts, const std::string &lm,
                       const std::vector<std::string> &unigrams, double token_min_logp, double beam_prune_logp,
                       double unk_offset, double log_base_change, double avg_token_len, double log_clip,
                       double blank_skip_logp) {
             py::gil_scoped_release release;  // loading an LM takes a while
             return std::make_shared<Decoder>(std::move(kinds), std::move(texts), lm, unigrams,
                                              Constants{token_min_logp, beam_prune_logp, unk_offset,
                                                        log_base_change, avg_token_len, log_clip, blank_skip_logp});
           }),
           py::arg("kinds"), py::arg("texts"), py::arg("lm"), py::arg("unigrams"), py::arg("token_min_logp"),
           py::arg("beam_prune_logp"), py::arg("unk_offset"), py::arg("log_base_change"), py::arg("avg_token_len"), py::arg("log_clip"),
           py::arg("blank_skip_logp"))
      .def_property_readonly("has_lm", &Decoder::has_lm);
  py::class_<Utterance>(m, "Utterance")
      .def(py::init<std::shared_ptr<const Decoder>, int, double, double, bool, const std::vector<std::string> &,
                    double>(),
           py::arg("decoder"), py::arg("beam_width"), py::arg("alpha"), py::arg("beta"), py::arg("use_lm"),
           py::arg("hotwords"), py::arg("hotword_weight"))
      .def("advance", py::overload_cast<const Frames &>(&Utterance::advance), py::arg("logprobs"))
      .def("best", &Utterance::best)
      .def("stability", &Utterance::stability)
      .def("interim", &Utterance::interim)
      .def("finish", &Utterance::finish, py::arg("n"));
  m.def("advance_many", &advance_many, py::arg("utterances"), py::arg("logprobs"), py::arg("threads"));
}
