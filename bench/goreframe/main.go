// goreframe: the bench's stand-in for Ollama-style re-framing in Go (issue #6's optional
// comparator; bench/README.md, "Go re-framing").
//
// It does per token what Ollama's own OpenAI layer (middleware/openai.go) does: the
// OpenAI request is decoded and re-encoded as a native /api/chat request, and every NDJSON
// line of the reply is decoded into a chat response, turned into a chat.completion.chunk
// and encoded again with encoding/json, then written as one SSE event and flushed. Unlike
// Ollama, which does this inside its own server, this runs as a separate proxy (one more
// hop, as the gateway), with the standard library only: net/http for both sides (keep-alive
// connections to Ollama, chunked responses to the client). It is a bench instrument, not a
// product: no limits, no timeouts beyond the defaults, errors passed on as they come.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"time"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type openAIRequest struct {
	Model       string    `json:"model"`
	Messages    []message `json:"messages"`
	Stream      bool      `json:"stream"`
	MaxTokens   *int      `json:"max_tokens"`
	Temperature *float64  `json:"temperature"`
	TopP        *float64  `json:"top_p"`
}

type ollamaRequest struct {
	Model    string         `json:"model"`
	Messages []message      `json:"messages"`
	Stream   bool           `json:"stream"`
	Options  map[string]any `json:"options,omitempty"`
}

type ollamaResponse struct {
	Model      string  `json:"model"`
	Message    message `json:"message"`
	Done       bool    `json:"done"`
	DoneReason string  `json:"done_reason"`
}

type delta struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type choice struct {
	Index        int     `json:"index"`
	Delta        delta   `json:"delta"`
	FinishReason *string `json:"finish_reason"`
}

type chunk struct {
	ID                string   `json:"id"`
	Object            string   `json:"object"`
	Created           int64    `json:"created"`
	Model             string   `json:"model"`
	SystemFingerprint string   `json:"system_fingerprint"`
	Choices           []choice `json:"choices"`
}

type proxy struct {
	upstream string
	client   *http.Client
}

func (p *proxy) chat(w http.ResponseWriter, r *http.Request) {
	var req openAIRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"message":"invalid JSON"}}`, http.StatusBadRequest)
		return
	}
	options := map[string]any{}
	if req.MaxTokens != nil {
		options["num_predict"] = *req.MaxTokens
	}
	if req.Temperature != nil {
		options["temperature"] = *req.Temperature
	}
	if req.TopP != nil {
		options["top_p"] = *req.TopP
	}
	body, err := json.Marshal(ollamaRequest{req.Model, req.Messages, true, options})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	resp, err := p.client.Post(p.upstream+"/api/chat", "application/json", bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	flusher, _ := w.(http.Flusher)
	id := fmt.Sprintf("chatcmpl-%d", rand.Intn(999))
	created := time.Now().Unix()
	// The default 4 KiB buffer (ReadBytes grows past it for a longer line): a bigger one per
	// stream would weigh on the memory figure at 1000 streams, not on the relay.
	lines := bufio.NewReader(resp.Body)
	for {
		line, err := lines.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			var part ollamaResponse
			if json.Unmarshal(line, &part) != nil {
				return
			}
			c := chunk{id, "chat.completion.chunk", created, part.Model, "fp_ollama",
				[]choice{{0, delta{"assistant", part.Message.Content}, nil}}}
			if part.Done {
				reason := "stop"
				if part.DoneReason == "length" {
					reason = "length"
				}
				c.Choices[0].FinishReason = &reason
			}
			event, _ := json.Marshal(c)
			fmt.Fprintf(w, "data: %s\n\n", event)
			if part.Done {
				fmt.Fprint(w, "data: [DONE]\n\n")
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := flag.String("upstream", "http://127.0.0.1:11434", "Ollama's address")
	flag.Parse()
	transport := &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true}
	p := &proxy{*upstream, &http.Client{Transport: transport}}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/chat/completions", p.chat)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// The runner reads the port from this line, as from the simulator's.
	fmt.Printf("{\"port\": %d}\n", ln.Addr().(*net.TCPAddr).Port)
	log.Fatal(http.Serve(ln, mux))
}
