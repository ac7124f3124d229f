package computesdk

import (
	"context"
	"encoding/json"
	"errors"
	"iter"
	"net"
	"strconv"
	"strings"

	messagingv1 "github.com/computesdk/computesdk/clients/go/api/messaging/v1"
	networkv1 "github.com/computesdk/computesdk/clients/go/api/network/v1"
)

// Network is a shared network and its members.
type Network = networkv1.Network

// Networks manages shared networks and forwarded ports.
type Networks struct{ c *Client }

func (c *Client) Networks() *Networks { return &Networks{c} }

// Create puts the members (hostname -> sandbox id) on a private subnet of their own.
func (n *Networks) Create(ctx context.Context, name string, members map[string]string) (*Network, error) {
	req := &networkv1.CreateNetworkRequest{Name: name}
	for host, id := range members {
		req.Members = append(req.Members, &networkv1.NetworkMember{SandboxId: id, Hostname: host})
	}
	resp, err := n.c.Raw.Networks.CreateNetwork(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.GetNetwork(), nil
}

func (n *Networks) Get(ctx context.Context, name string) (*Network, error) {
	resp, err := n.c.Raw.Networks.GetNetwork(ctx, &networkv1.GetNetworkRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return resp.GetNetwork(), nil
}

func (n *Networks) List(ctx context.Context) ([]*Network, error) {
	resp, err := n.c.Raw.Networks.ListNetworks(ctx, &networkv1.ListNetworksRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetNetworks(), nil
}

func (n *Networks) Delete(ctx context.Context, name string) error {
	_, err := n.c.Raw.Networks.DeleteNetwork(ctx, &networkv1.DeleteNetworkRequest{Name: name})
	return err
}

// ServiceURL is the URL other members use to reach member's port.
func (n *Networks) ServiceURL(ctx context.Context, network, member string, port int) (string, error) {
	resp, err := n.c.Raw.Networks.GetServiceUrl(ctx, &networkv1.GetServiceUrlRequest{Network: network, Member: member, Port: uint32(port)})
	if err != nil {
		return "", err
	}
	return resp.GetUrl(), nil
}

// URL forwards a port on the host's loopback to the sandbox's port.
func (n *Networks) URL(ctx context.Context, sandboxID string, port int) (string, error) {
	resp, err := n.c.Raw.Networks.ExposePort(ctx, &networkv1.ExposePortRequest{SandboxId: sandboxID, Port: uint32(port)})
	if err != nil {
		return "", err
	}
	return resp.GetUrl(), nil
}

// ---------------------------------------------------------------- channels

// Message is one delivery on a channel.
type Message = messagingv1.Message

// Channels are message queues hosted by the daemon: at least once, ordered per sender.
type Channels struct{ c *Client }

func (c *Client) Channels() *Channels { return &Channels{c} }

// Connect creates a channel for these members (sandbox ids or any names).
func (ch *Channels) Connect(ctx context.Context, name string, capacity int, members ...string) error {
	_, err := ch.c.Raw.Messaging.CreateChannel(ctx, &messagingv1.CreateChannelRequest{Name: name, Members: members, Capacity: uint32(capacity)})
	return err
}

func (ch *Channels) Delete(ctx context.Context, name string) error {
	_, err := ch.c.Raw.Messaging.DeleteChannel(ctx, &messagingv1.DeleteChannelRequest{Name: name})
	return err
}

// Send queues payload for recipient ("" = every other member), waiting while the
// queue is full; it returns the sender's sequence number.
func (ch *Channels) Send(ctx context.Context, channel, sender, recipient string, payload []byte) (uint64, error) {
	resp, err := ch.c.Raw.Messaging.SendMessage(ctx, &messagingv1.SendMessageRequest{
		Channel: channel, Sender: sender, Recipient: recipient, Payload: payload})
	if err != nil {
		return 0, err
	}
	return resp.GetSenderSequence(), nil
}

// Subscribe yields every unacknowledged message, then new ones; Ack them as they are handled.
func (ch *Channels) Subscribe(ctx context.Context, channel, member string) iter.Seq2[*Message, error] {
	return received(ctx, func(ctx context.Context) (receiver[*messagingv1.SubscribeResponse], error) {
		return ch.c.Raw.Messaging.Subscribe(ctx, &messagingv1.SubscribeRequest{Channel: channel, Member: member})
	}, (*messagingv1.SubscribeResponse).GetMessage)
}

// Ack acknowledges member's messages up to sequence.
func (ch *Channels) Ack(ctx context.Context, channel, member string, sequence uint64) error {
	_, err := ch.c.Raw.Messaging.AckMessages(ctx, &messagingv1.AckMessagesRequest{Channel: channel, Member: member, Sequence: sequence})
	return err
}

// ---------------------------------------------------------------- the spec's network and queue

// SharedNetwork is the spec's createSharedNetwork: its members on a private
// subnet of their own, reaching each other by service name.
type SharedNetwork struct {
	Name   string
	client *Client
}

// CreateSharedNetwork puts the sandboxes on a new network. A member's service
// name is, live, its env SERVICE_NAME (at create or by SetEnv later), else its
// metadata "service", else metadata "name", else its id; the other members
// resolve it.
func CreateSharedNetwork(ctx context.Context, members []*Sandbox) (*SharedNetwork, error) {
	if len(members) == 0 {
		return nil, errors.New("computesdk: a shared network needs members")
	}
	c := members[0].Client()
	name := "net-" + randomID()[:12]
	req := &networkv1.CreateNetworkRequest{Name: name}
	for _, sb := range members {
		// No hostname: the daemon names each member as above, and follows changes.
		req.Members = append(req.Members, &networkv1.NetworkMember{SandboxId: sb.ID()})
	}
	if _, err := c.Raw.Networks.CreateNetwork(ctx, req); err != nil {
		return nil, err
	}
	return &SharedNetwork{Name: name, client: c}, nil
}

// ServiceURL is the URL members reach service name's port 80 at,
// "http://api:80". It asks nothing of the daemon, so it holds before any
// member has that name (ResolveServiceURL checks one does).
func (n *SharedNetwork) ServiceURL(name string) string { return n.ServicePortURL(name, 80) }

// ServicePortURL is ServiceURL for another port. Service names are DNS
// labels, so case does not matter: the URL has the name in lower case.
func (n *SharedNetwork) ServicePortURL(name string, port int) string {
	return "http://" + net.JoinHostPort(strings.ToLower(name), strconv.Itoa(port))
}

// ResolveServiceURL is the URL of member's port as the daemon gives it: it
// fails (NOT_FOUND) when no member has that name or id.
func (n *SharedNetwork) ResolveServiceURL(ctx context.Context, member string, port int) (string, error) {
	return n.client.Networks().ServiceURL(ctx, n.Name, member, port)
}

// Info is the network as the daemon has it now: subnet, members, their names.
func (n *SharedNetwork) Info(ctx context.Context) (*Network, error) {
	return n.client.Networks().Get(ctx, n.Name)
}

// Delete takes the members off the network and removes it.
func (n *SharedNetwork) Delete(ctx context.Context) error {
	return n.client.Networks().Delete(ctx, n.Name)
}

// MessageQueue is the spec's message queue, a channel the daemon hosts:
//
//	var mq computesdk.MessageQueue
//	err := mq.Connect(ctx, []*computesdk.Sandbox{web, api})
//	_, err = mq.Send(ctx, "web", "api", map[string]string{"action": "process-data"})
//
// Members are known by their service names (see CreateSharedNetwork). The
// recipient must be one (else NOT_FOUND MEMBER_NOT_FOUND); a sender that is
// no member's name is the message's "from" label (the caller sends it).
type MessageQueue struct {
	// Name is the channel's; Connect picks one when it is empty.
	Name     string
	Capacity int // messages queued per member before Send waits; 0: the daemon's default
	client   *Client
}

// Connect creates the queue's channel with these sandboxes as members.
func (q *MessageQueue) Connect(ctx context.Context, members []*Sandbox) error {
	if len(members) == 0 {
		return errors.New("computesdk: a message queue needs members")
	}
	ids := make([]string, 0, len(members))
	for _, sb := range members {
		ids = append(ids, sb.ID())
	}
	if q.Name == "" {
		q.Name = "mq-" + randomID()[:12]
	}
	q.client = members[0].Client()
	return q.client.Channels().Connect(ctx, q.Name, q.Capacity, ids...)
}

func (q *MessageQueue) channels() (*Channels, error) {
	if q.client == nil {
		return nil, errors.New("computesdk: MessageQueue: call Connect first")
	}
	return q.client.Channels(), nil
}

// Send queues payload for recipient ("" = every other member): []byte and
// string as they are, anything else as JSON. It returns the sender's
// sequence number.
func (q *MessageQueue) Send(ctx context.Context, from, to string, payload any) (uint64, error) {
	ch, err := q.channels()
	if err != nil {
		return 0, err
	}
	var data []byte
	switch p := payload.(type) {
	case []byte:
		data = p
	case string:
		data = []byte(p)
	default:
		if data, err = json.Marshal(p); err != nil {
			return 0, err
		}
	}
	return ch.Send(ctx, q.Name, from, to, data)
}

// Subscribe yields member's unacknowledged messages, then new ones (see Channels.Subscribe).
func (q *MessageQueue) Subscribe(ctx context.Context, member string) iter.Seq2[*Message, error] {
	ch, err := q.channels()
	if err != nil {
		return func(yield func(*Message, error) bool) { yield(nil, err) }
	}
	return ch.Subscribe(ctx, q.Name, member)
}

// Ack acknowledges member's messages up to sequence.
func (q *MessageQueue) Ack(ctx context.Context, member string, sequence uint64) error {
	ch, err := q.channels()
	if err != nil {
		return err
	}
	return ch.Ack(ctx, q.Name, member, sequence)
}

// Close deletes the queue's channel.
func (q *MessageQueue) Close(ctx context.Context) error {
	ch, err := q.channels()
	if err != nil {
		return err
	}
	return ch.Delete(ctx, q.Name)
}
